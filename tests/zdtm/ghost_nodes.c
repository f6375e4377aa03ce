/*
 * ghost_nodes: FIFOs and device nodes whose node was unlinked while
 * open.
 *
 * State (fd: what):
 *   10 gn.fifo O_RDONLY|O_NONBLOCK, unlinked; "queued" waits in it
 *   11 gn.fifo O_WRONLY (the same FIFO)
 *   12 gn.fifo O_RDWR, opened through /proc/self/fd/10 after the unlink
 *   13 gn.null (char 1:3) O_RDWR, mode 0620, owner 1000:1001, unlinked
 *   14 gn.zero (char 1:5) O_RDONLY, unlinked
 * Verified: each link reads "NAME (deleted)"; fstat: type, mode, owner,
 * device number, no links; 10, 11 and 12 are one FIFO and 13 is another
 * inode than 14; the queued bytes, then what 11 writes 10 reads; a write
 * to 13 is swallowed, a read of 14 gives zeros.
 */
#include "zdtm.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

static struct stat before[5];

static void make(const char *name, mode_t mode, dev_t dev)
{
	char p[4096];
	zdtm_path(p, sizeof(p), name);
	unlink(p);
	if (mknod(p, mode, dev))
		zdtm_die("mknod %s: %s", p, strerror(errno));
}

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

static void gone(const char *name)
{
	char p[4096];
	zdtm_path(p, sizeof(p), name);
	if (unlink(p))
		zdtm_die("unlink %s: %s", p, strerror(errno));
}

static void check_fd(int fd, const char *name, const struct stat *b)
{
	char lp[64], link[4200], want[4200], p[4096];
	struct stat s;
	ssize_t n;

	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
	n = readlink(lp, link, sizeof(link) - 1);
	zdtm_check(n > 0, "readlink %s: %s", lp, strerror(errno));
	link[n] = 0;
	zdtm_path(p, sizeof(p), name);
	snprintf(want, sizeof(want), "%s (deleted)", p);
	zdtm_check(!strcmp(link, want), "fd %d links to %s, expected %s", fd, link, want);
	zdtm_check(fstat(fd, &s) == 0, "fstat %d: %s", fd, strerror(errno));
	zdtm_check(s.st_mode == b->st_mode && s.st_uid == b->st_uid && s.st_gid == b->st_gid && s.st_rdev == b->st_rdev,
		   "fd %d mode %o owner %u:%u rdev %lx, was %o %u:%u %lx", fd, s.st_mode, s.st_uid, s.st_gid,
		   (unsigned long)s.st_rdev, b->st_mode, b->st_uid, b->st_gid, (unsigned long)b->st_rdev);
	zdtm_check(s.st_nlink == 0, "fd %d has %lu links", fd, (unsigned long)s.st_nlink);
}

static void sabotage(void)
{
	char c[8];
	switch (zdtm_sabotage) {
	case 1: /* the queued bytes were lost */
		read(10, c, sizeof(c));
		break;
	case 2: /* the null device became another one */
		dup2(14, 13);
		break;
	case 3: /* the write end is another FIFO */
		{
			int p[2];
			pipe(p);
			dup2(p[1], 11);
		}
		break;
	}
}

int main(void)
{
	char buf[64];
	struct stat a, b, c;
	int fd;

	zdtm_init();
	make("gn.fifo", S_IFIFO | 0640, 0);
	place("gn.fifo", O_RDONLY | O_NONBLOCK, 10);
	place("gn.fifo", O_WRONLY, 11);
	if (write(11, "queued", 6) != 6)
		zdtm_die("write: %s", strerror(errno));
	gone("gn.fifo");
	fd = open("/proc/self/fd/10", O_RDWR);
	if (fd < 0 || dup2(fd, 12) != 12)
		zdtm_die("reopen: %s", strerror(errno));
	close(fd);
	make("gn.null", S_IFCHR | 0620, makedev(1, 3));
	{
		char p[4096];
		zdtm_path(p, sizeof(p), "gn.null");
		if (chown(p, 1000, 1001) || chmod(p, 0620))
			zdtm_die("chown %s: %s", p, strerror(errno));
	}
	place("gn.null", O_RDWR, 13);
	gone("gn.null");
	make("gn.zero", S_IFCHR | 0444, makedev(1, 5));
	place("gn.zero", O_RDONLY, 14);
	gone("gn.zero");
	for (int i = 0; i < 5; i++)
		if (fstat(10 + i, &before[i]))
			zdtm_die("fstat: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_fd(10, "gn.fifo", &before[0]);
	check_fd(11, "gn.fifo", &before[1]);
	check_fd(12, "gn.fifo", &before[2]);
	check_fd(13, "gn.null", &before[3]);
	check_fd(14, "gn.zero", &before[4]);
	zdtm_check(!fstat(10, &a) && !fstat(11, &b) && !fstat(12, &c), "fstat: %s", strerror(errno));
	zdtm_check(a.st_ino == b.st_ino && a.st_ino == c.st_ino && a.st_dev == b.st_dev, "fds 10, 11, 12 are not one FIFO");
	zdtm_check(!fstat(13, &a) && !fstat(14, &b) && a.st_ino != b.st_ino, "gn.null and gn.zero are one inode");
	zdtm_check(read(10, buf, sizeof(buf)) == 6 && !memcmp(buf, "queued", 6), "the queued bytes are not there");
	zdtm_check(write(11, "more", 4) == 4 && read(10, buf, sizeof(buf)) == 4 && !memcmp(buf, "more", 4),
		   "what fd 11 writes fd 10 does not read");
	zdtm_check(write(12, "rw", 2) == 2 && read(10, buf, sizeof(buf)) == 2, "what fd 12 writes fd 10 does not read");
	zdtm_check(write(13, "x", 1) == 1, "a write to the null device: %s", strerror(errno));
	memset(buf, 1, sizeof(buf));
	zdtm_check(read(14, buf, 16) == 16, "a read of the zero device: %s", strerror(errno));
	for (int i = 0; i < 16; i++)
		zdtm_check(buf[i] == 0, "byte %d of the zero device is %d", i, buf[i]);
	zdtm_pass();
}
