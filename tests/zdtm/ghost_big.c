/*
 * ghost_big: an unlinked file far larger than any buffer: its data is
 * streamed to the image and back, never held in memory whole.
 *
 * State (fd: what):
 *   10 gb.file O_RDWR, unlinked, offset 7 MiB + 3: 200 MiB long, data in
 *      [0, 40 MiB), [72 MiB, 136 MiB) and the last page (104 MiB and a
 *      page in all, past the old 64 MiB limit), holes elsewhere; every
 *      4 KiB block holds the pattern of its own number
 * Verified: size, the data extents (SEEK_DATA / SEEK_HOLE), every block
 * of data, zeros in a hole, the offset, the link naming gb.file, and that
 * a write after restore lands in the file. The runner's memory test
 * checks that `lpm checkpoint` and `lpm restore` of it stay far below
 * its data in peak memory.
 */
#include "zdtm.h"

#define MIB (1024L * 1024)
#define BIG (200 * MIB)
#define BLOCK 4096

static const off_t ext[3][2] = { { 0, 40 * MIB }, { 72 * MIB, 136 * MIB }, { BIG - BLOCK, BIG } };

static void put_blocks(int fd, off_t from, off_t to)
{
	static char b[BLOCK];
	for (off_t off = from; off < to; off += BLOCK) {
		zdtm_fill(b, BLOCK, 0x6b00000 + off / BLOCK);
		if (pwrite(fd, b, BLOCK, off) != BLOCK)
			zdtm_die("pwrite at %lld: %s", (long long)off, strerror(errno));
	}
}

static void sabotage(void)
{
	static char b[BLOCK];
	switch (zdtm_sabotage) {
	case 1: /* one block of data changed */
		memset(b, 0x5a, BLOCK);
		pwrite(10, b, BLOCK, 100 * MIB);
		break;
	case 2: /* a hole filled */
		pwrite(10, "x", 1, 50 * MIB);
		break;
	case 3: /* the offset moved */
		lseek(10, 5, SEEK_SET);
		break;
	}
}

int main(void)
{
	static char b[BLOCK];
	char p[4096], lp[64], link[4200], want[4200];
	ssize_t n;
	int fd, i = 0;
	off_t off;

	zdtm_init();
	zdtm_path(p, sizeof(p), "gb.file");
	fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fd < 0 || dup2(fd, 10) != 10)
		zdtm_die("open %s: %s", p, strerror(errno));
	close(fd);
	if (ftruncate(10, BIG))
		zdtm_die("ftruncate: %s", strerror(errno));
	for (i = 0; i < 3; i++)
		put_blocks(10, ext[i][0], ext[i][1]);
	if (unlink(p) || lseek(10, 7 * MIB + 3, SEEK_SET) < 0)
		zdtm_die("unlink: %s", strerror(errno));
	/* The filesystem keeps the holes (else the test means nothing). */
	if (lseek(10, 40 * MIB, SEEK_DATA) != 72 * MIB)
		zdtm_die("the file has no hole at 40 MiB (does this filesystem keep holes?)");
	lseek(10, 7 * MIB + 3, SEEK_SET);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(lseek(10, 0, SEEK_CUR) == 7 * MIB + 3, "offset %lld, was %lld", (long long)lseek(10, 0, SEEK_CUR),
		   (long long)(7 * MIB + 3));
	zdtm_check(lseek(10, 0, SEEK_END) == BIG, "size %lld, was %lld", (long long)lseek(10, 0, SEEK_END), (long long)BIG);
	off = 0;
	for (i = 0; i < 3; i++) {
		off_t d = lseek(10, off, SEEK_DATA), h = lseek(10, d, SEEK_HOLE);
		zdtm_check(d == ext[i][0] && h == ext[i][1], "data extent %d is [%lld, %lld), was [%lld, %lld)", i,
			   (long long)d, (long long)h, (long long)ext[i][0], (long long)ext[i][1]);
		for (off_t o = d; o < h; o += BLOCK) {
			zdtm_check(pread(10, b, BLOCK, o) == BLOCK, "pread at %lld: %s", (long long)o, strerror(errno));
			zdtm_check(zdtm_diff(b, BLOCK, 0x6b00000 + o / BLOCK) < 0, "block at %lld differs", (long long)o);
		}
		off = h;
	}
	zdtm_check(pread(10, b, BLOCK, 50 * MIB) == BLOCK, "pread in a hole: %s", strerror(errno));
	for (i = 0; i < BLOCK; i++)
		zdtm_check(b[i] == 0, "byte %d at 50 MiB is not zero", i);
	snprintf(lp, sizeof(lp), "/proc/self/fd/10");
	n = readlink(lp, link, sizeof(link) - 1);
	zdtm_check(n > 0, "readlink: %s", strerror(errno));
	link[n] = 0;
	snprintf(want, sizeof(want), "%s (deleted)", p);
	zdtm_check(!strcmp(link, want), "fd 10 links to %s, expected %s", link, want);
	zdtm_check(pwrite(10, "new", 3, 60 * MIB) == 3 && pread(10, b, 3, 60 * MIB) == 3 && !memcmp(b, "new", 3),
		   "a write after restore does not land");
	zdtm_pass();
}
