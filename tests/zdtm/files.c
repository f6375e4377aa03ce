/*
 * files: file descriptors of regular files and devices.
 *
 * State (fd: what):
 *   10 files.ro read-only at offset 100, and 100 a dup of it (one open file)
 *   11 files.app O_WRONLY|O_APPEND after one write
 *   12 files.rw O_RDWR at offset 5000 with FD_CLOEXEC, and 57 a dup without
 *   20 files.ghost O_RDWR, unlinked, 3*4096+17 bytes, mode 0600, at 4096
 *   30 /dev/null O_WRONLY, 31 /dev/zero O_RDONLY
 *   40 the work directory, O_DIRECTORY|O_CLOEXEC
 * plus 0 (/dev/null), 1 and 2 (the log) from the harness; nothing else.
 * Verified: exactly these fds; FD_CLOEXEC; F_GETFL; offsets; that dups share
 * their offset; inode, size, mode, link count and device numbers; contents,
 * including the unlinked file's; reading /dev/zero gives zeros.
 * Nothing is written to the files after setup.
 */
#include "zdtm.h"

#include <dirent.h>
#include <sys/sysmacros.h>

#define RO_SIZE 10000
#define RW_SIZE 8192
#define GHOST_SIZE (3 * 4096 + 17)
#define APP_TEXT "hello append\n"

static const int fds[] = { 0, 1, 2, 10, 11, 12, 20, 30, 31, 40, 57, 100 };
#define NFDS ((int)(sizeof(fds) / sizeof(fds[0])))
static int fl_before[128];
static char ghost_data[GHOST_SIZE + 7];

static void path(char *buf, const char *name)
{
	zdtm_path(buf, 4096, name);
}

/* Opens path and moves the fd to number target (FD_CLOEXEC if cloexec). */
static void place(const char *p, int flags, int target, int cloexec)
{
	int fd = open(p, flags, 0600);

	if (fd < 0)
		zdtm_die("open %s: %s", p, strerror(errno));
	if (dup3(fd, target, cloexec ? O_CLOEXEC : 0) != target)
		zdtm_die("dup3 %d: %s", target, strerror(errno));
	close(fd);
}

static void write_file(const char *p, size_t len, uint64_t seed)
{
	static char buf[RO_SIZE + RW_SIZE];
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	zdtm_fill(buf, (len + 7) & ~7UL, seed);
	if (fd < 0 || write(fd, buf, len) != (ssize_t)len || close(fd))
		zdtm_die("write %s: %s", p, strerror(errno));
}

/* Compares len bytes of fd at off with the pattern of seed from pos. */
static void check_content(int fd, off_t off, size_t len, uint64_t seed, const char *what)
{
	static char want[GHOST_SIZE + 8], got[GHOST_SIZE + 8];

	zdtm_fill(want, sizeof(want) - 8, seed);
	zdtm_check(pread(fd, got, len, off) == (ssize_t)len, "pread %s: %s", what, strerror(errno));
	for (size_t i = 0; i < len; i++)
		zdtm_check(got[i] == want[off + i], "%s byte %zu differs", what, (size_t)off + i);
}

static void check_stat(int fd, const char *p, const char *what)
{
	struct stat a, b;

	zdtm_check(fstat(fd, &a) == 0 && stat(p, &b) == 0, "stat %s: %s", what, strerror(errno));
	zdtm_check(a.st_dev == b.st_dev && a.st_ino == b.st_ino, "fd %d is not %s", fd, what);
}

static void check_fd_set(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int seen[NFDS] = { 0 };

	zdtm_check(d, "opendir /proc/self/fd: %s", strerror(errno));
	while ((e = readdir(d))) {
		int fd, known = 0;
		if (e->d_name[0] == '.')
			continue;
		fd = atoi(e->d_name);
		if (fd == dirfd(d))
			continue;
		for (int i = 0; i < NFDS; i++)
			if (fds[i] == fd)
				seen[i] = known = 1;
		if (!known) {
			char link[256] = "", lp[64];
			snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
			readlink(lp, link, sizeof(link) - 1);
			closedir(d);
			zdtm_fail("unexpected fd %d (%s)", fd, link);
		}
	}
	closedir(d);
	for (int i = 0; i < NFDS; i++)
		zdtm_check(seen[i], "fd %d is missing", fds[i]);
}

static void sabotage(void)
{
	char p[4096];

	switch (zdtm_sabotage) {
	case 1: /* an offset was not restored */
		lseek(10, 0, SEEK_SET);
		break;
	case 2: /* an extra fd leaked into the process */
		open("/dev/null", O_RDONLY);
		break;
	case 3: /* FD_CLOEXEC was lost */
		fcntl(12, F_SETFD, 0);
		break;
	case 4: /* a dup became a separate open file */
		path(p, "files.ro");
		place(p, O_RDONLY, 100, 0);
		lseek(100, 100, SEEK_SET);
		break;
	case 5: /* the unlinked file's content was lost */
		pwrite(20, "X", 1, 5000);
		break;
	case 6: /* O_APPEND was lost */
		fcntl(11, F_SETFL, 0);
		break;
	}
}

int main(void)
{
	char p[4096], buf[4096], link[4096], lp[64];
	struct stat st;
	ssize_t n;

	zdtm_init();
	path(p, "files.ro");
	write_file(p, RO_SIZE, 0x7200);
	place(p, O_RDONLY, 10, 0);
	if (read(10, buf, 100) != 100 || dup2(10, 100) != 100)
		zdtm_die("read/dup2 ro: %s", strerror(errno));
	path(p, "files.app");
	place(p, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 11, 0);
	if (write(11, APP_TEXT, strlen(APP_TEXT)) != (ssize_t)strlen(APP_TEXT))
		zdtm_die("write app: %s", strerror(errno));
	path(p, "files.rw");
	write_file(p, RW_SIZE, 0x7300);
	place(p, O_RDWR | O_CLOEXEC, 12, 1);
	if (lseek(12, 5000, SEEK_SET) != 5000 || dup2(12, 57) != 57)
		zdtm_die("lseek/dup2 rw: %s", strerror(errno));
	path(p, "files.ghost");
	place(p, O_RDWR | O_CREAT | O_TRUNC, 20, 0);
	zdtm_fill(ghost_data, sizeof(ghost_data) - 7, 0x7400);
	if (write(20, ghost_data, GHOST_SIZE) != GHOST_SIZE || unlink(p) ||
	    lseek(20, 4096, SEEK_SET) != 4096)
		zdtm_die("ghost: %s", strerror(errno));
	place("/dev/null", O_WRONLY, 30, 0);
	place("/dev/zero", O_RDONLY, 31, 0);
	zdtm_path(p, sizeof(p), ".");
	place(p, O_RDONLY | O_DIRECTORY, 40, 1);
	for (int i = 0; i < NFDS; i++)
		fl_before[fds[i]] = fcntl(fds[i], F_GETFL);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_fd_set();
	for (int i = 0; i < NFDS; i++) {
		int fd = fds[i], fdfl = fcntl(fd, F_GETFD), fl = fcntl(fd, F_GETFL);
		zdtm_check(fdfl == ((fd == 12 || fd == 40) ? FD_CLOEXEC : 0), "fd %d F_GETFD %#x", fd,
			   fdfl);
		zdtm_check(fl == fl_before[fd], "fd %d F_GETFL %#o, was %#o", fd, fl, fl_before[fd]);
	}
	zdtm_check((fl_before[10] & (O_ACCMODE | O_APPEND)) == O_RDONLY, "fd 10 flags at setup");
	zdtm_check((fl_before[11] & (O_ACCMODE | O_APPEND)) == (O_WRONLY | O_APPEND), "fd 11 flags");
	zdtm_check((fl_before[12] & O_ACCMODE) == O_RDWR && (fl_before[20] & O_ACCMODE) == O_RDWR,
		   "fd 12/20 flags");
	zdtm_check(fl_before[40] & O_DIRECTORY, "fd 40 flags");

	zdtm_check(lseek(10, 0, SEEK_CUR) == 100, "fd 10 offset %lld, expected 100",
		   (long long)lseek(10, 0, SEEK_CUR));
	zdtm_check(lseek(11, 0, SEEK_CUR) == (off_t)strlen(APP_TEXT), "fd 11 offset %lld",
		   (long long)lseek(11, 0, SEEK_CUR));
	zdtm_check(lseek(12, 0, SEEK_CUR) == 5000, "fd 12 offset %lld, expected 5000",
		   (long long)lseek(12, 0, SEEK_CUR));
	zdtm_check(lseek(20, 0, SEEK_CUR) == 4096, "fd 20 offset %lld, expected 4096",
		   (long long)lseek(20, 0, SEEK_CUR));

	path(p, "files.ro");
	check_stat(10, p, "files.ro");
	check_stat(100, p, "files.ro (fd 100)");
	check_content(10, 0, RO_SIZE, 0x7200, "files.ro");
	zdtm_check(read(100, buf, 10) == 10, "read fd 100: %s", strerror(errno));
	zdtm_check(lseek(10, 0, SEEK_CUR) == 110,
		   "reading fd 100 did not move fd 10 (offset %lld): the dup is a separate open file",
		   (long long)lseek(10, 0, SEEK_CUR));
	{
		int fd = openat(40, "files.ro", O_RDONLY | O_CLOEXEC);
		zdtm_check(fd >= 0, "openat(40, files.ro): %s", strerror(errno));
		check_stat(fd, p, "files.ro via the directory fd");
		close(fd);
	}
	path(p, "files.app");
	check_stat(11, p, "files.app");
	zdtm_check(fstat(11, &st) == 0 && st.st_size == (off_t)strlen(APP_TEXT), "files.app size %lld",
		   (long long)st.st_size);
	{
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		n = pread(fd, buf, sizeof(buf), 0);
		close(fd);
	}
	zdtm_check(n == (ssize_t)strlen(APP_TEXT) && !memcmp(buf, APP_TEXT, n), "files.app content");
	path(p, "files.rw");
	check_stat(12, p, "files.rw");
	check_stat(57, p, "files.rw (fd 57)");
	check_content(12, 0, RW_SIZE, 0x7300, "files.rw");
	zdtm_check(read(57, buf, 4096) == RW_SIZE - 5000, "read fd 57 at 5000: %s", strerror(errno));
	zdtm_check(lseek(12, 0, SEEK_CUR) == RW_SIZE,
		   "reading fd 57 did not move fd 12: the dup is a separate open file");

	zdtm_check(fstat(20, &st) == 0, "fstat ghost: %s", strerror(errno));
	zdtm_check(st.st_nlink == 0, "unlinked file has %lu links", (unsigned long)st.st_nlink);
	zdtm_check(st.st_size == GHOST_SIZE, "unlinked file size %lld", (long long)st.st_size);
	zdtm_check((st.st_mode & 07777) == 0600, "unlinked file mode %o", st.st_mode & 07777);
	check_content(20, 0, GHOST_SIZE, 0x7400, "unlinked file");
	snprintf(lp, sizeof(lp), "/proc/self/fd/20");
	n = readlink(lp, link, sizeof(link) - 1);
	zdtm_check(n > 0, "readlink fd 20");
	link[n] = 0;
	zdtm_check(strstr(link, "/files.ghost (deleted)"), "fd 20 links to %s", link);

	zdtm_check(fstat(30, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3),
		   "fd 30 is not /dev/null");
	zdtm_check(write(30, buf, 100) == 100, "write /dev/null: %s", strerror(errno));
	zdtm_check(fstat(0, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3),
		   "stdin is not /dev/null");
	zdtm_check(fstat(31, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 5),
		   "fd 31 is not /dev/zero");
	memset(buf, 1, sizeof(buf));
	zdtm_check(read(31, buf, sizeof(buf)) == sizeof(buf), "read /dev/zero: %s", strerror(errno));
	for (size_t i = 0; i < sizeof(buf); i++)
		zdtm_check(!buf[i], "/dev/zero gave a non-zero byte");
	zdtm_path(p, sizeof(p), ".");
	check_stat(40, p, "the work directory");
	zdtm_pass();
}
