/*
 * pipe_full: pipes filled to their capacity.
 *
 * State:
 *   A a default pipe (64 KiB) filled with 4 KiB writes until EAGAIN, both
 *     ends O_NONBLOCK (pipe2)
 *   B a pipe grown to fs.pipe-max-size (F_SETPIPE_SZ) and filled the same
 *     way, its write end blocking, its read end O_NONBLOCK
 *   C a pipe shrunk to one page and filled, with its write end also
 *     reopened through /proc/self/fd (a second, blocking description)
 *   D a default pipe filled with 1000-byte writes until EAGAIN (its pages
 *     partly used), then 2500 bytes read from its head
 * Verified: capacities; every byte of each pipe, in order, and nothing
 * more; A, B and C are still full (a non-blocking write of one byte fails
 * with EAGAIN) and stay writable once read; the flags of every end.
 */
#include "zdtm.h"

#define CHUNK 4096
#define D_CHUNK 1000
#define D_READ 2500

struct pipe_state {
	int r, w, w2;
	int size;
	size_t bytes;
	uint64_t seed;
	int fl_r, fl_w, fl_w2;
};

static struct pipe_state a, b, c, d;
static char buf[CHUNK * 4];

/* Writes chunks of `chunk` bytes of the pattern until EAGAIN. */
static size_t fill(int w, size_t chunk, uint64_t seed)
{
	static char data[2 << 20];
	size_t off = 0;

	zdtm_fill(data, sizeof(data), seed);
	for (;;) {
		ssize_t n = write(w, data + off, chunk);
		if (n < 0 && errno == EAGAIN)
			return off;
		if (n <= 0)
			zdtm_die("write: %s", strerror(errno));
		off += n;
		if (off + chunk > sizeof(data))
			zdtm_die("the pipe takes more than %zu bytes", sizeof(data));
	}
}

static void flags_of(struct pipe_state *p)
{
	p->fl_r = fcntl(p->r, F_GETFL);
	p->fl_w = fcntl(p->w, F_GETFL);
	p->fl_w2 = p->w2 >= 0 ? fcntl(p->w2, F_GETFL) : -1;
}

static void make(struct pipe_state *p, int flags, int size, uint64_t seed)
{
	int fd[2];

	if (pipe2(fd, flags))
		zdtm_die("pipe2: %s", strerror(errno));
	p->r = fd[0], p->w = fd[1], p->w2 = -1, p->seed = seed;
	if (size && fcntl(p->w, F_SETPIPE_SZ, size) < 0)
		zdtm_die("F_SETPIPE_SZ %d: %s", size, strerror(errno));
	p->size = fcntl(p->r, F_GETPIPE_SZ);
}

/* Fills through a non-blocking write end, then puts its flags back. */
static void fill_nonblocking(struct pipe_state *p, size_t chunk)
{
	int fl = fcntl(p->w, F_GETFL);

	fcntl(p->w, F_SETFL, fl | O_NONBLOCK);
	p->bytes = fill(p->w, chunk, p->seed);
	fcntl(p->w, F_SETFL, fl);
}

/* Reads everything (the read end is made non-blocking) and compares. */
static void drain(struct pipe_state *p, size_t skip, const char *what)
{
	static char got[2 << 20], want[2 << 20];
	size_t off = 0;

	fcntl(p->r, F_SETFL, fcntl(p->r, F_GETFL) | O_NONBLOCK);
	for (;;) {
		ssize_t n = read(p->r, got + off, sizeof(got) - off);
		if (n < 0 && errno == EAGAIN)
			break;
		zdtm_check(n > 0, "read %s: %s", what, n ? strerror(errno) : "EOF");
		off += n;
	}
	zdtm_check(off == p->bytes - skip, "%s holds %zu bytes, expected %zu", what, off, p->bytes - skip);
	zdtm_fill(want, sizeof(want), p->seed);
	for (size_t i = 0; i < off; i++)
		zdtm_check(got[i] == want[skip + i], "%s: byte %zu of %zu differs", what, i, off);
}

static void check_full(struct pipe_state *p, const char *what)
{
	int fl = fcntl(p->w, F_GETFL);
	ssize_t n;

	fcntl(p->w, F_SETFL, fl | O_NONBLOCK);
	n = write(p->w, "x", 1);
	fcntl(p->w, F_SETFL, fl);
	zdtm_check(n < 0 && errno == EAGAIN, "%s was full and now takes a byte (write returned %zd)", what, n);
}

static void check_flags(struct pipe_state *p, const char *what)
{
	zdtm_check(fcntl(p->r, F_GETFL) == p->fl_r, "%s read end F_GETFL %#o, was %#o", what, fcntl(p->r, F_GETFL), p->fl_r);
	zdtm_check(fcntl(p->w, F_GETFL) == p->fl_w, "%s write end F_GETFL %#o, was %#o", what, fcntl(p->w, F_GETFL), p->fl_w);
	if (p->w2 >= 0)
		zdtm_check(fcntl(p->w2, F_GETFL) == p->fl_w2, "%s second write end F_GETFL %#o, was %#o", what,
			   fcntl(p->w2, F_GETFL), p->fl_w2);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* A lost its last byte */
		fcntl(a.r, F_SETFL, O_NONBLOCK);
		read(a.r, buf, CHUNK);
		write(a.w, buf, CHUNK - 1);
		break;
	case 2: /* B lost its first page */
		read(b.r, buf, CHUNK);
		break;
	case 3: /* D lost a byte in its middle */
		read(d.r, buf, 1);
		break;
	}
}

int main(void)
{
	char path[64], text[32];
	int max;

	zdtm_init();
	if (zdtm_read_file("/proc/sys/fs/pipe-max-size", text, sizeof(text)) <= 0)
		zdtm_die("read fs.pipe-max-size: %s", strerror(errno));
	max = atoi(text);
	make(&a, O_NONBLOCK, 0, 0xa100);
	a.bytes = fill(a.w, CHUNK, a.seed);
	make(&b, 0, max, 0xb100);
	fcntl(b.r, F_SETFL, O_NONBLOCK);
	fill_nonblocking(&b, CHUNK);
	make(&c, 0, CHUNK, 0xc100);
	fill_nonblocking(&c, CHUNK);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", c.w);
	c.w2 = open(path, O_WRONLY);
	if (c.w2 < 0)
		zdtm_die("reopen %s: %s", path, strerror(errno));
	make(&d, 0, 0, 0xd100);
	fill_nonblocking(&d, D_CHUNK);
	if (read(d.r, buf, D_READ) != D_READ)
		zdtm_die("read D: %s", strerror(errno));
	if (a.bytes != (size_t)a.size || b.bytes != (size_t)max || c.bytes != CHUNK)
		zdtm_die("pipes took %zu, %zu and %zu bytes", a.bytes, b.bytes, c.bytes);
	flags_of(&a), flags_of(&b), flags_of(&c), flags_of(&d);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_flags(&a, "A"), check_flags(&b, "B"), check_flags(&c, "C"), check_flags(&d, "D");
	zdtm_check(fcntl(a.r, F_GETPIPE_SZ) == a.size, "A's capacity %d, was %d", fcntl(a.r, F_GETPIPE_SZ), a.size);
	zdtm_check(fcntl(b.r, F_GETPIPE_SZ) == max, "B's capacity %d, was %d", fcntl(b.r, F_GETPIPE_SZ), max);
	zdtm_check(fcntl(c.r, F_GETPIPE_SZ) == CHUNK, "C's capacity %d, was %d", fcntl(c.r, F_GETPIPE_SZ), CHUNK);
	check_full(&a, "A"), check_full(&b, "B"), check_full(&c, "C");
	drain(&a, 0, "A"), drain(&b, 0, "B"), drain(&c, 0, "C"), drain(&d, D_READ, "D");
	/* Once read, the ends still carry data. */
	zdtm_check(write(a.w, "again", 5) == 5 && read(a.r, buf, 5) == 5, "A after draining: %s", strerror(errno));
	zdtm_check(write(c.w2, "again", 5) == 5 && read(c.r, buf, 5) == 5, "C after draining: %s", strerror(errno));
	zdtm_pass();
}
