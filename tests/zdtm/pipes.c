/*
 * pipes: pipes and FIFOs with data in them.
 *
 * State: pipe A with 10000 unread bytes (11000 written, 1000 read, so the
 * data starts inside a buffer page); pipe B resized to 256 KiB
 * (F_SETPIPE_SZ) holding 150000 bytes, more than a default pipe can, write
 * end O_NONBLOCK; a FIFO in the work dir open O_RDWR and O_RDONLY|O_NONBLOCK
 * with 5000 bytes in it; a pipe to a forked child that blocks reading it.
 * The child also holds A, B and the FIFO.
 * Verified: exact bytes and no more in A, B and the FIFO (read through the
 * other fd); pipe sizes; F_GETFL of every end; after restore the root writes
 * 50000 bytes to the child, which checks them, sees EOF and exits 0.
 */
#include "zdtm.h"

#include <sys/wait.h>

#define A_WRITTEN 11000
#define A_READ 1000
#define B_SIZE (256 * 1024)
#define B_BYTES 150000
#define FIFO_BYTES 5000
#define PRE_BYTES 3000
#define POST_BYTES 50000

static int pa[2], pb[2], pc[2], fifo_rw, fifo_r;
static int fl_before[8];
static int sz_a, sz_b;
static pid_t child;

static void fill(char *buf, size_t len, uint64_t seed)
{
	static uint64_t w[(POST_BYTES + B_BYTES) / 8 + 1];
	zdtm_fill(w, sizeof(w), seed);
	memcpy(buf, w, len);
}

static void write_all(int fd, const char *buf, size_t len)
{
	size_t off = 0;
	while (off < len) {
		ssize_t w = write(fd, buf + off, len - off);
		if (w <= 0)
			zdtm_die("write: %s", strerror(errno));
		off += w;
	}
}

/* Child: reads PRE_BYTES at once, then POST_BYTES after restore, then EOF. */
static void child_main(void)
{
	static char want[PRE_BYTES + POST_BYTES], got[PRE_BYTES + POST_BYTES + 1];
	size_t off = 0;
	ssize_t r;

	close(pc[1]);
	fill(want, sizeof(want), 0xc000);
	while (off < sizeof(want)) {
		r = read(pc[0], got + off, sizeof(got) - off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			zdtm_log("child: read: %s", strerror(errno));
			_exit(5);
		}
		if (r == 0) {
			zdtm_log("child: EOF after %zu of %zu bytes", off, sizeof(want));
			_exit(4);
		}
		off += r;
	}
	if (off > sizeof(want) || memcmp(got, want, sizeof(want))) {
		zdtm_log("child: data differs");
		_exit(3);
	}
	r = read(pc[0], got, 1);
	if (r != 0) {
		zdtm_log("child: %zd bytes after the expected data", r);
		_exit(6);
	}
	_exit(0);
}

/* Reads everything from a non-blocking fd; checks it against the pattern. */
static void drain(int fd, size_t expect, uint64_t seed, size_t skip, const char *what)
{
	static char want[B_BYTES + A_WRITTEN], got[B_BYTES + 4096];
	size_t off = 0;
	ssize_t r;

	zdtm_check(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0, "F_SETFL: %s",
		   strerror(errno));
	fill(want, skip + expect, seed);
	for (;;) {
		r = read(fd, got + off, sizeof(got) - off);
		if (r < 0 && errno == EAGAIN)
			break;
		zdtm_check(r > 0, "read %s: %s", what, r ? strerror(errno) : "EOF");
		off += r;
		zdtm_check(off <= expect, "%s holds more than %zu bytes", what, expect);
	}
	zdtm_check(off == expect, "%s holds %zu bytes, expected %zu", what, off, expect);
	zdtm_check(!memcmp(got, want + skip, expect), "%s data differs", what);
}

static void sabotage(void)
{
	char c;

	switch (zdtm_sabotage) {
	case 1: /* pipe A lost a byte */
		read(pa[0], &c, 1);
		break;
	case 2: /* pipe B got an extra byte */
		write(pb[1], "x", 1);
		break;
	case 3: /* the FIFO lost data */
		read(fifo_r, &c, 1);
		break;
	case 4: /* the pipe to the child holds a stray byte */
		write(pc[1], "x", 1);
		break;
	case 5: /* a pipe end lost its flags */
		fcntl(pb[1], F_SETFL, 0);
		break;
	}
}

int main(void)
{
	static char buf[B_BYTES + POST_BYTES + PRE_BYTES];
	char path[4096];
	int status, ends[6];

	zdtm_init();
	if (pipe(pa) || pipe(pb) || pipe(pc))
		zdtm_die("pipe: %s", strerror(errno));
	if (fcntl(pb[0], F_SETPIPE_SZ, B_SIZE) < 0)
		zdtm_die("F_SETPIPE_SZ: %s", strerror(errno));
	sz_a = fcntl(pa[0], F_GETPIPE_SZ);
	sz_b = fcntl(pb[0], F_GETPIPE_SZ);
	if (sz_b != B_SIZE)
		zdtm_die("pipe B size %d", sz_b);
	fill(buf, A_WRITTEN, 0xa000);
	write_all(pa[1], buf, A_WRITTEN);
	if (read(pa[0], buf, A_READ) != A_READ)
		zdtm_die("read A");
	fill(buf, B_BYTES, 0xb000);
	write_all(pb[1], buf, B_BYTES);
	if (fcntl(pb[1], F_SETFL, O_NONBLOCK))
		zdtm_die("F_SETFL: %s", strerror(errno));

	zdtm_path(path, sizeof(path), "pipes.fifo");
	if (mkfifo(path, 0600))
		zdtm_die("mkfifo %s: %s", path, strerror(errno));
	fifo_rw = open(path, O_RDWR);
	fifo_r = open(path, O_RDONLY | O_NONBLOCK);
	if (fifo_rw < 0 || fifo_r < 0)
		zdtm_die("open fifo: %s", strerror(errno));
	fill(buf, FIFO_BYTES, 0xf000);
	write_all(fifo_rw, buf, FIFO_BYTES);

	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main();
	zdtm_kid(child);
	close(pc[0]);
	fill(buf, PRE_BYTES + POST_BYTES, 0xc000);
	write_all(pc[1], buf, PRE_BYTES);

	ends[0] = pa[0], ends[1] = pa[1], ends[2] = pb[0], ends[3] = pb[1];
	ends[4] = fifo_rw, ends[5] = fifo_r;
	for (int i = 0; i < 6; i++)
		fl_before[i] = fcntl(ends[i], F_GETFL);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < 6; i++)
		zdtm_check(fcntl(ends[i], F_GETFL) == fl_before[i], "fd %d F_GETFL %#o, was %#o",
			   ends[i], fcntl(ends[i], F_GETFL), fl_before[i]);
	zdtm_check(fl_before[3] & O_NONBLOCK, "pipe B write end is blocking");
	zdtm_check(fcntl(pa[0], F_GETPIPE_SZ) == sz_a, "pipe A size %d, was %d",
		   fcntl(pa[0], F_GETPIPE_SZ), sz_a);
	zdtm_check(fcntl(pb[0], F_GETPIPE_SZ) == sz_b, "pipe B size %d, was %d",
		   fcntl(pb[0], F_GETPIPE_SZ), sz_b);
	drain(pa[0], A_WRITTEN - A_READ, 0xa000, A_READ, "pipe A");
	drain(pb[0], B_BYTES, 0xb000, 0, "pipe B");
	drain(fifo_r, FIFO_BYTES, 0xf000, 0, "the FIFO");

	fill(buf, PRE_BYTES + POST_BYTES, 0xc000);
	signal(SIGPIPE, SIG_IGN);
	zdtm_check(write(pc[1], buf + PRE_BYTES, POST_BYTES) == POST_BYTES,
		   "write to the child's pipe: %s", strerror(errno));
	close(pc[1]);
	status = zdtm_wait_kid(child, "finish reading");
	zdtm_check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "the child failed reading its pipe (status %#x: 3 data differs, 4 early EOF, 5 read error, 6 extra data)",
		   status);
	zdtm_pass();
}
