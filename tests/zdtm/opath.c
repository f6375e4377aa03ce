/*
 * opath: O_PATH descriptors: of a regular file, of a directory, of a
 * symbolic link itself (O_PATH|O_NOFOLLOW) and of a symbolic link
 * followed to its file.
 *
 * State (fd: what):
 *   10 op.file O_PATH
 *   11 op.dir O_PATH|O_DIRECTORY
 *   12 op.link O_PATH|O_NOFOLLOW: the link itself (to op.file)
 *   13 op.link O_PATH: followed, op.file
 *   14 op.file O_PATH, FD_CLOEXEC
 * Verified: status flags (F_GETFL) and FD_CLOEXEC; each link names its
 * file; fstat of each (AT_EMPTY_PATH) is the file's inode and type (12 a
 * symbolic link reading "op.file"); 10, 13 and 14 are one file, 11 a
 * directory openat can create in; read() fails with EBADF (no access
 * was gained); a reopen through /proc/self/fd/10 reads the file.
 */
#include "zdtm.h"

#include <sys/stat.h>

static struct stat st_file, st_dir, st_link;

static void place(const char *name, int flags, int target)
{
	char p[4096];
	int fd;

	zdtm_path(p, sizeof(p), name);
	fd = open(p, flags);
	if (fd < 0 || dup2(fd, target) != target)
		zdtm_die("open %s: %s", p, strerror(errno));
	close(fd);
}

static void check_fd(int fd, int flags, const char *name, const struct stat *b, int cloexec)
{
	char lp[64], link[4200], p[4096];
	struct stat s;
	int fl = fcntl(fd, F_GETFL), fdf = fcntl(fd, F_GETFD);
	ssize_t n;

	zdtm_check(fl == flags, "fd %d flags %o, expected %o", fd, fl, flags);
	zdtm_check(fdf == (cloexec ? FD_CLOEXEC : 0), "fd %d FD_CLOEXEC %d", fd, fdf);
	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
	n = readlink(lp, link, sizeof(link) - 1);
	zdtm_check(n > 0, "readlink %s: %s", lp, strerror(errno));
	link[n] = 0;
	zdtm_path(p, sizeof(p), name);
	zdtm_check(!strcmp(link, p), "fd %d links to %s, expected %s", fd, link, p);
	zdtm_check(fstatat(fd, "", &s, AT_EMPTY_PATH) == 0, "fstatat fd %d: %s", fd, strerror(errno));
	zdtm_check(s.st_dev == b->st_dev && s.st_ino == b->st_ino && s.st_mode == b->st_mode,
		   "fd %d is inode %lu mode %o, expected %lu mode %o", fd, (unsigned long)s.st_ino, s.st_mode,
		   (unsigned long)b->st_ino, b->st_mode);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the link's descriptor followed it */
		place("op.link", O_PATH, 12);
		break;
	case 2: /* a descriptor with access */
		place("op.file", O_RDONLY, 10);
		break;
	case 3: /* close-on-exec lost */
		fcntl(14, F_SETFD, 0);
		break;
	}
}

int main(void)
{
	char p[4096], q[4096], buf[64];
	ssize_t n;
	int fd;

	zdtm_init();
	zdtm_path(p, sizeof(p), "op.file");
	fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fd < 0 || write(fd, "opath data", 10) != 10)
		zdtm_die("create %s: %s", p, strerror(errno));
	close(fd);
	zdtm_path(q, sizeof(q), "op.dir");
	if (mkdir(q, 0755) && errno != EEXIST)
		zdtm_die("mkdir %s: %s", q, strerror(errno));
	zdtm_path(q, sizeof(q), "op.link");
	unlink(q);
	if (symlink("op.file", q))
		zdtm_die("symlink %s: %s", q, strerror(errno));
	place("op.file", O_PATH, 10);
	place("op.dir", O_PATH | O_DIRECTORY, 11);
	place("op.link", O_PATH | O_NOFOLLOW, 12);
	place("op.link", O_PATH, 13);
	place("op.file", O_PATH, 14);
	fcntl(14, F_SETFD, FD_CLOEXEC);
	if (stat(p, &st_file) || lstat(q, &st_link))
		zdtm_die("stat: %s", strerror(errno));
	zdtm_path(q, sizeof(q), "op.dir");
	if (stat(q, &st_dir))
		zdtm_die("stat: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_fd(10, O_PATH | O_RDONLY, "op.file", &st_file, 0);
	check_fd(11, O_PATH | O_DIRECTORY, "op.dir", &st_dir, 0);
	check_fd(12, O_PATH | O_NOFOLLOW, "op.link", &st_link, 0);
	check_fd(13, O_PATH, "op.file", &st_file, 0);
	check_fd(14, O_PATH, "op.file", &st_file, 1);
	n = readlinkat(12, "", buf, sizeof(buf) - 1);
	zdtm_check(n == 7 && !memcmp(buf, "op.file", 7), "fd 12 does not read as the link to op.file");
	zdtm_check(read(10, buf, 1) < 0 && errno == EBADF, "fd 10 can be read (%s)", strerror(errno));
	fd = open("/proc/self/fd/10", O_RDONLY);
	zdtm_check(fd >= 0 && read(fd, buf, 10) == 10 && !memcmp(buf, "opath data", 10), "a reopen of fd 10 does not read op.file");
	close(fd);
	fd = openat(11, "new", O_CREAT | O_WRONLY, 0600);
	zdtm_check(fd >= 0, "openat in fd 11: %s", strerror(errno));
	close(fd);
	unlinkat(11, "new", 0);
	zdtm_pass();
}
