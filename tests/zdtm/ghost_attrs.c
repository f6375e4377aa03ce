/*
 * ghost_attrs: unlinked open files keep their sparse layout, mode, owner,
 * group and timestamps; an open file's timestamps do not move.
 *
 * State (fd: what):
 *   10 ghost.sparse O_RDWR, unlinked: 256 MiB long, data only in a few
 *      extents (a hole first, a written page, three pages at 1 MiB, 100
 *      bytes at 100 MiB + 5000, 5 bytes at the very end), mode 06751,
 *      owner 1000:1001, atime and mtime set to nanosecond values in the
 *      past
 *   11 ghost.empty O_RDONLY, unlinked, empty, mode 0400, owner
 *      1002:1003, other old timestamps
 *   12 ghost.linked O_RDONLY, a linked file with old timestamps whose
 *      atime is older than its mtime (a read would move it: relatime)
 * Verified: st_mode, st_uid, st_gid, st_size, st_blocks, st_nlink and
 * st_atim / st_mtim to the nanosecond of each; the data and hole extents
 * of the sparse file (SEEK_DATA / SEEK_HOLE) and its data; the links of
 * the unlinked fds name their files. Nothing reads or writes the files
 * after setup.
 */
#include "zdtm.h"

#include <sys/stat.h>

#define MIB (1024L * 1024)
#define BIG (256 * MIB)
#define MAX_EXT 32

static struct stat before[3];
static off_t ext[MAX_EXT][2];
static int next;

static void path(char *buf, const char *name)
{
	zdtm_path(buf, 4096, name);
}

static void pwrite_pattern(int fd, off_t off, size_t len, uint64_t seed)
{
	static char b[3 * 4096 + 8];
	zdtm_fill(b, sizeof(b) - 8, seed);
	if (pwrite(fd, b, len, off) != (ssize_t)len)
		zdtm_die("pwrite %zu at %lld: %s", len, (long long)off, strerror(errno));
}

/* The data extents [data, hole) of fd. */
static int extents(int fd, off_t out[][2])
{
	off_t off = 0, size = lseek(fd, 0, SEEK_END);
	int n = 0;

	while (off < size && n < MAX_EXT) {
		off_t data = lseek(fd, off, SEEK_DATA), hole;
		if (data < 0)
			break;
		hole = lseek(fd, data, SEEK_HOLE);
		out[n][0] = data, out[n][1] = hole;
		n++;
		off = hole;
	}
	return n;
}

static void set_times(int fd, time_t a, long an, time_t m, long mn)
{
	struct timespec ts[2] = { { a, an }, { m, mn } };
	if (futimens(fd, ts))
		zdtm_die("futimens: %s", strerror(errno));
}

static void place(const char *name, int flags, int target)
{
	char p[4096];
	int fd;

	path(p, name);
	fd = open(p, flags | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || dup2(fd, target) != target)
		zdtm_die("open %s: %s", p, strerror(errno));
	close(fd);
}

static void open_as(const char *p, int flags, int target)
{
	int fd = open(p, flags);

	if (fd < 0 || dup2(fd, target) != target)
		zdtm_die("open %s: %s", p, strerror(errno));
	close(fd);
}

static void check_stat(int fd, const struct stat *b, const char *what)
{
	struct stat s;

	zdtm_check(fstat(fd, &s) == 0, "fstat %s: %s", what, strerror(errno));
	zdtm_check(s.st_mode == b->st_mode, "%s mode %o, was %o", what, s.st_mode, b->st_mode);
	zdtm_check(s.st_uid == b->st_uid && s.st_gid == b->st_gid, "%s owner %u:%u, was %u:%u", what, s.st_uid,
		   s.st_gid, b->st_uid, b->st_gid);
	zdtm_check(s.st_size == b->st_size, "%s size %lld, was %lld", what, (long long)s.st_size,
		   (long long)b->st_size);
	zdtm_check(s.st_blocks == b->st_blocks, "%s has %lld blocks, had %lld", what, (long long)s.st_blocks,
		   (long long)b->st_blocks);
	zdtm_check(s.st_nlink == b->st_nlink, "%s has %lu links, had %lu", what, (unsigned long)s.st_nlink,
		   (unsigned long)b->st_nlink);
	zdtm_check(s.st_atim.tv_sec == b->st_atim.tv_sec && s.st_atim.tv_nsec == b->st_atim.tv_nsec,
		   "%s atime %lld.%09ld, was %lld.%09ld", what, (long long)s.st_atim.tv_sec, s.st_atim.tv_nsec,
		   (long long)b->st_atim.tv_sec, b->st_atim.tv_nsec);
	zdtm_check(s.st_mtim.tv_sec == b->st_mtim.tv_sec && s.st_mtim.tv_nsec == b->st_mtim.tv_nsec,
		   "%s mtime %lld.%09ld, was %lld.%09ld", what, (long long)s.st_mtim.tv_sec, s.st_mtim.tv_nsec,
		   (long long)b->st_mtim.tv_sec, b->st_mtim.tv_nsec);
}

static void check_link(int fd, const char *name)
{
	char lp[64], link[4096], want[4200], p[4096];
	ssize_t n;

	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
	n = readlink(lp, link, sizeof(link) - 1);
	zdtm_check(n > 0, "readlink fd %d: %s", fd, strerror(errno));
	link[n] = 0;
	path(p, name);
	snprintf(want, sizeof(want), "%s (deleted)", p);
	zdtm_check(!strcmp(link, want), "fd %d links to %s, expected %s", fd, link, want);
}

static void sabotage(void)
{
	struct timespec now[2] = { { 0, UTIME_OMIT }, { 0, UTIME_NOW } };
	char c;

	switch (zdtm_sabotage) {
	case 1: /* a data extent became a hole */
		fallocate(10, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MIB, 4096);
		break;
	case 2: /* the mode was lost */
		fchmod(10, 0644);
		break;
	case 3: /* the owner was lost */
		fchown(11, 0, 0);
		break;
	case 4: /* mtime moved */
		futimens(10, now);
		break;
	case 5: /* the linked file was read (its atime moves) */
		pread(12, &c, 1, 0);
		break;
	case 6: /* a hole was filled */
		pwrite(10, "x", 1, 50 * MIB);
		break;
	}
}

int main(void)
{
	char p[4096], got[3 * 4096], want[3 * 4096 + 8];
	off_t now_ext[MAX_EXT][2];
	int n;

	zdtm_init();
	place("ghost.sparse", O_RDWR, 10);
	if (ftruncate(10, BIG))
		zdtm_die("ftruncate: %s", strerror(errno));
	pwrite_pattern(10, 8192, 4096, 0x6100);
	pwrite_pattern(10, MIB, 3 * 4096, 0x6200);
	pwrite_pattern(10, 100 * MIB + 5000, 100, 0x6300);
	pwrite_pattern(10, BIG - 5, 5, 0x6400);
	if (fchown(10, 1000, 1001) || fchmod(10, 06751))
		zdtm_die("chown/chmod: %s", strerror(errno));
	set_times(10, 1000000000, 111111111, 1200000000, 222222222);
	path(p, "ghost.sparse");
	if (unlink(p))
		zdtm_die("unlink: %s", strerror(errno));

	place("ghost.empty", O_RDONLY, 11);
	if (fchown(11, 1002, 1003) || fchmod(11, 0400))
		zdtm_die("chown/chmod: %s", strerror(errno));
	set_times(11, 1300000000, 1, 1300000001, 999999999);
	path(p, "ghost.empty");
	if (unlink(p))
		zdtm_die("unlink: %s", strerror(errno));

	place("ghost.linked", O_RDWR, 12);
	pwrite_pattern(12, 0, 4096, 0x6500);
	path(p, "ghost.linked");
	close(12);
	open_as(p, O_RDONLY, 12);
	set_times(12, 1100000000, 5, 1150000000, 6);

	for (int i = 0; i < 3; i++)
		if (fstat(10 + i, &before[i]))
			zdtm_die("fstat: %s", strerror(errno));
	next = extents(10, ext);
	if (next != 4)
		zdtm_die("the sparse file has %d data extents, expected 4 (does this filesystem keep holes?)", next);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_stat(10, &before[0], "ghost.sparse");
	check_stat(11, &before[1], "ghost.empty");
	check_stat(12, &before[2], "ghost.linked");
	n = extents(10, now_ext);
	zdtm_check(n == next, "ghost.sparse has %d data extents, had %d", n, next);
	for (int i = 0; i < n; i++)
		zdtm_check(now_ext[i][0] == ext[i][0] && now_ext[i][1] == ext[i][1],
			   "data extent %d is [%lld, %lld), was [%lld, %lld)", i, (long long)now_ext[i][0],
			   (long long)now_ext[i][1], (long long)ext[i][0], (long long)ext[i][1]);
	zdtm_fill(want, sizeof(want) - 8, 0x6200);
	zdtm_check(pread(10, got, 3 * 4096, MIB) == 3 * 4096 && !memcmp(got, want, 3 * 4096), "data at 1 MiB differs");
	zdtm_fill(want, sizeof(want) - 8, 0x6100);
	zdtm_check(pread(10, got, 4096, 8192) == 4096 && !memcmp(got, want, 4096), "data at 8 KiB differs");
	zdtm_fill(want, sizeof(want) - 8, 0x6300);
	zdtm_check(pread(10, got, 100, 100 * MIB + 5000) == 100 && !memcmp(got, want, 100), "data at 100 MiB differs");
	zdtm_fill(want, sizeof(want) - 8, 0x6400);
	zdtm_check(pread(10, got, 10, BIG - 5) == 5 && !memcmp(got, want, 5), "data at the end differs");
	zdtm_check(pread(10, got, 4096, 100 * MIB) == 4096, "pread: %s", strerror(errno));
	for (int i = 0; i < 4096; i++)
		zdtm_check(got[i] == 0, "a zero byte at 100 MiB + %d is not zero", i);
	check_link(10, "ghost.sparse");
	check_link(11, "ghost.empty");
	zdtm_pass();
}
