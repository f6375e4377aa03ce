/*
 * ghost_dir: removed directories still in use: as working directories
 * and held open by descriptors.
 *
 * State:
 *   root   cwd gd.cwd (mode 0750, mtime in the past), removed; fd 10
 *          O_RDONLY|O_DIRECTORY of gd.held (mode 0705, owner 1000:1001),
 *          removed; fd 11 O_PATH of gd.cwd, taken before the removal
 *   child  forked after the removals: the same working directory
 * Verified: each link reads "NAME (deleted)"; the working directories of
 * both processes and fd 11 are one inode, without links; gd.held (fd 10)
 * is another; modes, owners and the mtime; nothing can be created in
 * either (ENOENT); a new gd.cwd made after restore is another directory.
 */
#include "zdtm.h"

#include <sys/stat.h>

static struct stat cwd_st, held_st;
static int to_kid[2], from_kid[2];

static void check_link(const char *what, const char *lp, const char *name)
{
	char link[4200], want[4200], p[4096];
	ssize_t n = readlink(lp, link, sizeof(link) - 1);

	zdtm_check(n > 0, "readlink %s: %s", lp, strerror(errno));
	link[n] = 0;
	zdtm_path(p, sizeof(p), name);
	snprintf(want, sizeof(want), "%s (deleted)", p);
	zdtm_check(!strcmp(link, want), "%s links to %s, expected %s", what, link, want);
}

/* s is the directory recorded as b: unlinked, same attributes (a restore
 * makes a new inode: identity is checked between holders). */
static void same(const char *what, const struct stat *s, const struct stat *b)
{
	zdtm_check(s->st_nlink == 0, "%s has %lu links", what, (unsigned long)s->st_nlink);
	zdtm_check(s->st_mode == b->st_mode && s->st_uid == b->st_uid && s->st_gid == b->st_gid,
		   "%s mode %o owner %u:%u, was %o %u:%u", what, s->st_mode, s->st_uid, s->st_gid, b->st_mode, b->st_uid,
		   b->st_gid);
	zdtm_check(s->st_mtim.tv_sec == b->st_mtim.tv_sec && s->st_mtim.tv_nsec == b->st_mtim.tv_nsec,
		   "%s mtime %lld.%09ld, was %lld.%09ld", what, (long long)s->st_mtim.tv_sec, s->st_mtim.tv_nsec,
		   (long long)b->st_mtim.tv_sec, b->st_mtim.tv_nsec);
}

/* The child only waits, in the removed working directory. */
static void kid(void)
{
	char c;
	while (read(to_kid[0], &c, 1) == 1)
		;
	_exit(0);
}

static void sabotage(void)
{
	char p[4096];
	switch (zdtm_sabotage) {
	case 1: /* the working directory is another one */
		zdtm_path(p, sizeof(p), "");
		chdir(p);
		break;
	case 2: /* the held directory lost its mode */
		fchmod(10, 0700);
		break;
	case 3: /* fd 11 is another removed directory */
		dup2(10, 11);
		break;
	}
}

int main(void)
{
	char p[4096], lp[64];
	struct stat s, s10, s11, sk;
	struct timespec ts[2] = { { 1200000000, 5 }, { 1300000000, 123456789 } };
	pid_t pid;
	int fd;

	zdtm_init();
	zdtm_path(p, sizeof(p), "gd.held");
	if (mkdir(p, 0705) || chown(p, 1000, 1001) || chmod(p, 0705))
		zdtm_die("mkdir %s: %s", p, strerror(errno));
	fd = open(p, O_RDONLY | O_DIRECTORY);
	if (fd < 0 || dup2(fd, 10) != 10 || rmdir(p))
		zdtm_die("open/rmdir %s: %s", p, strerror(errno));
	close(fd);
	zdtm_path(p, sizeof(p), "gd.cwd");
	if (mkdir(p, 0750) || chmod(p, 0750) || utimensat(AT_FDCWD, p, ts, 0) || chdir(p))
		zdtm_die("mkdir/chdir %s: %s", p, strerror(errno));
	fd = open(p, O_PATH);
	if (fd < 0 || dup2(fd, 11) != 11 || rmdir(p))
		zdtm_die("open/rmdir %s: %s", p, strerror(errno));
	close(fd);
	if (stat(".", &cwd_st) || fstat(10, &held_st))
		zdtm_die("stat: %s", strerror(errno));
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

	check_link("the working directory", "/proc/self/cwd", "gd.cwd");
	check_link("fd 10", "/proc/self/fd/10", "gd.held");
	check_link("fd 11", "/proc/self/fd/11", "gd.cwd");
	snprintf(lp, sizeof(lp), "/proc/%d/cwd", pid);
	check_link("the child's working directory", lp, "gd.cwd");
	zdtm_check(stat(".", &s) == 0, "stat .: %s", strerror(errno));
	same("the working directory", &s, &cwd_st);
	zdtm_check(fstat(11, &s11) == 0, "fstat 11: %s", strerror(errno));
	same("fd 11", &s11, &cwd_st);
	zdtm_check(s11.st_dev == s.st_dev && s11.st_ino == s.st_ino, "fd 11 is not the working directory");
	zdtm_check(stat(lp, &sk) == 0, "stat %s: %s", lp, strerror(errno));
	same("the child's working directory", &sk, &cwd_st);
	zdtm_check(sk.st_dev == s.st_dev && sk.st_ino == s.st_ino, "the child's working directory is not the root's");
	zdtm_check(fstat(10, &s10) == 0, "fstat 10: %s", strerror(errno));
	same("fd 10", &s10, &held_st);
	zdtm_check(s10.st_ino != s.st_ino, "gd.held and gd.cwd are one inode");
	zdtm_check(openat(10, "x", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT,
		   "a file could be created in the removed gd.held (%s)", strerror(errno));
	zdtm_check(open("y", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT,
		   "a file could be created in the removed working directory (%s)", strerror(errno));
	zdtm_path(p, sizeof(p), "gd.cwd");
	zdtm_check(mkdir(p, 0700) == 0 && stat(p, &s) == 0, "mkdir %s after restore: %s", p, strerror(errno));
	zdtm_check(s.st_ino != s11.st_ino, "the new gd.cwd is the removed one");
	rmdir(p);
	zdtm_pass();
}
