/*
 * ghost_map: mappings of files unlinked after mmap, with and without a
 * descriptor still open, shared and private, in two processes.
 *
 * State (4 pages each, pattern per file):
 *   gm.a  MAP_SHARED rw, fd 10 O_RDWR kept, unlinked; the child inherits
 *         the mapping
 *   gm.b  MAP_PRIVATE rw, pages 1 and 2 written (copies on write), fd
 *         closed, unlinked
 *   gm.c  MAP_SHARED rw, fd closed, unlinked; the child inherits it
 *   gm.d  MAP_PRIVATE rw, page 0 written, fd 11 O_RDWR kept, unlinked
 *   gm.e  MAP_SHARED read-only of an O_RDONLY descriptor, closed, unlinked
 * Verified: every page's content; fd 10 and the gm.a mapping are one
 * file (a write through one is read through the other), as gm.d's pages
 * not written follow its file and its written page does not; the child
 * and the root share gm.a and gm.c (what one writes the other reads);
 * gm.e cannot be made writable (mprotect EACCES); the maps name each
 * file "NAME (deleted)".
 */
#include "zdtm.h"

#include <sys/mman.h>

#define PG 4096
#define LEN (4 * PG)

static char *a, *b, *c, *d, *e;
static int to_kid[2], from_kid[2];

static char *make(const char *name, int oflags, int prot, int flags, uint64_t seed, int keep_as)
{
	char p[4096], buf[LEN];
	int fd;
	char *m;

	zdtm_path(p, sizeof(p), name);
	fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
	zdtm_fill(buf, LEN, seed);
	if (fd < 0 || write(fd, buf, LEN) != LEN)
		zdtm_die("create %s: %s", p, strerror(errno));
	close(fd);
	fd = open(p, oflags);
	m = mmap(NULL, LEN, prot, flags, fd, 0);
	if (fd < 0 || m == MAP_FAILED)
		zdtm_die("map %s: %s", p, strerror(errno));
	if (keep_as >= 0) {
		if (dup2(fd, keep_as) != keep_as)
			zdtm_die("dup2: %s", strerror(errno));
	}
	close(fd);
	if (unlink(p))
		zdtm_die("unlink %s: %s", p, strerror(errno));
	return m;
}

/* The child: on each byte from the root, copies a[0] into c[PG] and c[0]
 * into a[PG], then answers. */
static void kid(void)
{
	char x;
	while (read(to_kid[0], &x, 1) == 1) {
		c[PG] = a[0];
		a[PG] = c[0];
		if (write(from_kid[1], &x, 1) != 1)
			_exit(3);
	}
	_exit(0);
}

static void check_maps(void)
{
	static char maps[65536];
	const char *names[] = { "gm.a", "gm.b", "gm.c", "gm.d", "gm.e" };
	char p[4096], want[4200];

	zdtm_check(zdtm_read_file("/proc/self/maps", maps, sizeof(maps)) > 0, "read maps: %s", strerror(errno));
	for (int i = 0; i < 5; i++) {
		zdtm_path(p, sizeof(p), names[i]);
		snprintf(want, sizeof(want), "%s (deleted)\n", p);
		zdtm_check(strstr(maps, want), "no mapping reads %s", want);
	}
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* gm.b lost a page written */
		b[PG + 7] ^= 1;
		break;
	case 2: /* fd 10 is another file */
		dup2(11, 10);
		break;
	case 3: /* gm.c is no longer shared with the child */
		mmap(c, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS, -1, 0);
		break;
	}
}

int main(void)
{
	char buf[LEN], x;
	pid_t pid;

	zdtm_init();
	a = make("gm.a", O_RDWR, PROT_READ | PROT_WRITE, MAP_SHARED, 0x7a00, 10);
	b = make("gm.b", O_RDWR, PROT_READ | PROT_WRITE, MAP_PRIVATE, 0x7b00, -1);
	c = make("gm.c", O_RDWR, PROT_READ | PROT_WRITE, MAP_SHARED, 0x7c00, -1);
	d = make("gm.d", O_RDWR, PROT_READ | PROT_WRITE, MAP_PRIVATE, 0x7d00, 11);
	e = make("gm.e", O_RDONLY, PROT_READ, MAP_SHARED, 0x7e00, -1);
	zdtm_fill(buf, 2 * PG, 0x7b99);
	memcpy(b + PG, buf, 2 * PG);
	zdtm_fill(buf, PG, 0x7d99);
	memcpy(d, buf, PG);
	a[3 * PG] = 'A';
	if (pipe(to_kid) || pipe(from_kid))
		zdtm_die("pipe: %s", strerror(errno));
	pid = fork();
	if (pid < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (pid == 0)
		kid();
	zdtm_kid(pid);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_maps();
	zdtm_fill(buf, LEN, 0x7a00);
	buf[3 * PG] = 'A';
	zdtm_check(!memcmp(a, buf, LEN), "gm.a differs");
	zdtm_fill(buf, LEN, 0x7b00);
	zdtm_check(!memcmp(b, buf, PG) && !memcmp(b + 3 * PG, buf + 3 * PG, PG), "gm.b's pages not written differ");
	zdtm_fill(buf, 2 * PG, 0x7b99);
	zdtm_check(!memcmp(b + PG, buf, 2 * PG), "gm.b's written pages differ");
	zdtm_fill(buf, LEN, 0x7c00);
	zdtm_check(!memcmp(c, buf, LEN), "gm.c differs");
	zdtm_fill(buf, LEN, 0x7d00);
	zdtm_check(!memcmp(d + PG, buf + PG, 3 * PG), "gm.d's pages not written differ");
	zdtm_fill(buf, PG, 0x7d99);
	zdtm_check(!memcmp(d, buf, PG), "gm.d's written page differs");
	zdtm_fill(buf, LEN, 0x7e00);
	zdtm_check(!memcmp(e, buf, LEN), "gm.e differs");
	/* One file behind fd 10 and gm.a's mapping. */
	zdtm_check(pwrite(10, "fd10", 4, 2 * PG) == 4, "pwrite fd 10: %s", strerror(errno));
	zdtm_check(!memcmp(a + 2 * PG, "fd10", 4), "a write through fd 10 is not seen in gm.a's mapping");
	memcpy(a + 2 * PG + 100, "map", 3);
	zdtm_check(pread(10, buf, 3, 2 * PG + 100) == 3 && !memcmp(buf, "map", 3), "a write into gm.a is not read through fd 10");
	/* gm.d: the file's pages follow it, the written one does not. */
	zdtm_check(pwrite(11, "fd11", 4, 3 * PG) == 4 && pwrite(11, "fd11", 4, 0) == 4, "pwrite fd 11: %s", strerror(errno));
	zdtm_check(!memcmp(d + 3 * PG, "fd11", 4), "gm.d's page 3 does not follow its file");
	zdtm_check(memcmp(d, "fd11", 4), "gm.d's written page 0 follows its file");
	/* gm.e stays read-only for good. */
	zdtm_check(mprotect(e, LEN, PROT_READ | PROT_WRITE) < 0 && errno == EACCES,
		   "gm.e could be made writable (%s)", strerror(errno));
	/* Sharing with the child. */
	a[0] = 'R';
	c[0] = 'S';
	zdtm_check(write(to_kid[1], "?", 1) == 1 && read(from_kid[0], &x, 1) == 1, "the child does not answer");
	zdtm_check(c[PG] == 'R', "the child does not share gm.a");
	zdtm_check(a[PG] == 'S', "the child does not share gm.c");
	zdtm_pass();
}
