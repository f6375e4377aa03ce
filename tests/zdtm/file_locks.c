/*
 * file_locks: flock, POSIX record locks and OFD locks held across a
 * checkpoint, checked for contention by a second process of the tree.
 *
 * State: the parent holds flock(LOCK_EX) on a.dat (fd 3, shared with the
 * child by fork), POSIX locks WRITE 0-99 and READ 200-299 on b.dat (fd 4),
 * OFD locks WRITE 10-19 and READ 50-EOF on c.dat (fd 5, opened after the
 * fork so the child does not share it), and flock(LOCK_SH) on d.dat (fd 6).
 * The child opens its own descriptions of the files (fds 7-10) and holds a
 * POSIX READ lock 400-499 on b.dat.
 * Verified by the child on SIGUSR1: a.dat cannot be flocked; F_GETLK on
 * b.dat and F_OFD_GETLK on c.dat report exactly the parent's ranges, types
 * and (POSIX) pid, and no lock where there is none; d.dat takes a shared
 * flock but not an exclusive one. By the parent: F_GETLK shows the child's
 * READ 400-499 with its pid.
 */
#include "zdtm.h"

#include <sys/file.h>

static volatile sig_atomic_t asked;

static void on_usr1(int sig)
{
	(void)sig;
	asked = 1;
}

static int open_at(const char *name, int flags)
{
	char path[4096];
	int fd;
	zdtm_path(path, sizeof(path), name);
	fd = open(path, flags | O_CREAT, 0644);
	if (fd < 0)
		zdtm_die("open %s: %s", path, strerror(errno));
	return fd;
}

static int lk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	return fcntl(fd, cmd, &fl);
}

/* The lock F_GETLK / F_OFD_GETLK reports for a probe; 0 on success. */
static int probe(int fd, int cmd, short type, off_t start, off_t len, struct flock *out)
{
	memset(out, 0, sizeof(*out));
	out->l_type = type;
	out->l_whence = SEEK_SET;
	out->l_start = start;
	out->l_len = len;
	return fcntl(fd, cmd, out);
}

#define EXPECT(fd, cmd, ptype, pstart, plen, rtype, rstart, rlen, rpid)                                          \
	do {                                                                                                     \
		struct flock f;                                                                                  \
		if (probe(fd, cmd, ptype, pstart, plen, &f) || f.l_type != (rtype) ||                            \
		    ((rtype) != F_UNLCK && (f.l_start != (rstart) || f.l_len != (rlen) || f.l_pid != (rpid)))) { \
			zdtm_log("probe %s %d+%d on fd %d: type %d %lld+%lld pid %d, expected type %d %d+%d pid %d", \
				 #cmd, (int)(pstart), (int)(plen), fd, f.l_type, (long long)f.l_start,             \
				 (long long)f.l_len, f.l_pid, rtype, (int)(rstart), (int)(rlen), (int)(rpid));     \
			return 1;                                                                                \
		}                                                                                                \
	} while (0)

static int child_check(pid_t parent, int a, int b, int c, int d)
{
	EXPECT(b, F_GETLK, F_RDLCK, 0, 1, F_WRLCK, 0, 100, parent);
	EXPECT(b, F_GETLK, F_WRLCK, 100, 100, F_UNLCK, 0, 0, 0);
	EXPECT(b, F_GETLK, F_RDLCK, 200, 100, F_UNLCK, 0, 0, 0);
	EXPECT(b, F_GETLK, F_WRLCK, 250, 1, F_RDLCK, 200, 100, parent);
	EXPECT(c, F_OFD_GETLK, F_RDLCK, 0, 0, F_WRLCK, 10, 10, -1);
	EXPECT(c, F_OFD_GETLK, F_WRLCK, 20, 30, F_UNLCK, 0, 0, 0);
	EXPECT(c, F_OFD_GETLK, F_RDLCK, 60, 1000, F_UNLCK, 0, 0, 0);
	EXPECT(c, F_OFD_GETLK, F_WRLCK, 1000000, 1, F_RDLCK, 50, 0, -1);
	if (flock(a, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK) {
		zdtm_log("a.dat is not flocked by the parent");
		return 1;
	}
	if (flock(d, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) {
		zdtm_log("d.dat is not share-flocked by the parent");
		return 1;
	}
	if (flock(d, LOCK_SH | LOCK_NB)) {
		zdtm_log("d.dat refuses a shared flock: %s", strerror(errno));
		return 1;
	}
	flock(d, LOCK_UN);
	return 0;
}

int main(void)
{
	struct sigaction sa;
	struct flock f;
	pid_t child, parent = getpid();
	int a, b, c, d, status, pp[2];
	char ok;

	zdtm_init();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	a = open_at("a.dat", O_RDWR);
	b = open_at("b.dat", O_RDWR);
	if (a != 3 || b != 4)
		zdtm_die("fds %d %d, expected 3 and 4", a, b);
	if (flock(a, LOCK_EX | LOCK_NB))
		zdtm_die("flock a: %s", strerror(errno));
	if (lk(b, F_SETLK, F_WRLCK, 0, 100) || lk(b, F_SETLK, F_RDLCK, 200, 100))
		zdtm_die("F_SETLK b: %s", strerror(errno));
	if (pipe(pp))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		int ca, cb, cc, cd;
		close(pp[0]);
		ca = open_at("a.dat", O_RDWR);
		cb = open_at("b.dat", O_RDWR);
		cc = open_at("c.dat", O_RDWR);
		cd = open_at("d.dat", O_RDWR);
		if (lk(cb, F_SETLK, F_RDLCK, 400, 100))
			zdtm_die("child F_SETLK b: %s", strerror(errno));
		if (write(pp[1], "k", 1) != 1)
			_exit(2);
		close(pp[1]);
		while (!asked)
			zdtm_sleep_ms(20);
		_exit(child_check(parent, ca, cb, cc, cd));
	}
	zdtm_kid(child);
	close(pp[1]);
	if (read(pp[0], &ok, 1) != 1)
		zdtm_die("the child failed its setup");
	/* End of file once the child closed its end too: ready no earlier,
	 * or the state seen before the checkpoint may still hold it. */
	if (read(pp[0], &ok, 1) != 0)
		zdtm_die("the child kept its end of the pipe");
	close(pp[0]);
	c = open_at("c.dat", O_RDWR);
	d = open_at("d.dat", O_RDWR);
	if (c != 5 || d != 6)
		zdtm_die("fds %d %d, expected 5 and 6", c, d);
	if (lk(c, F_OFD_SETLK, F_WRLCK, 10, 10) || lk(c, F_OFD_SETLK, F_RDLCK, 50, 0))
		zdtm_die("F_OFD_SETLK c: %s", strerror(errno));
	if (flock(d, LOCK_SH | LOCK_NB))
		zdtm_die("flock d: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();

	if (zdtm_sabotage == 1)
		flock(a, LOCK_UN);
	if (zdtm_sabotage == 2)
		lk(b, F_SETLK, F_UNLCK, 200, 100);
	if (zdtm_sabotage == 3)
		lk(c, F_OFD_SETLK, F_RDLCK, 10, 10);
	if (zdtm_sabotage == 4)
		flock(d, LOCK_EX | LOCK_NB), flock(d, LOCK_UN);

	zdtm_check(probe(b, F_GETLK, F_WRLCK, 400, 1, &f) == 0 && f.l_type == F_RDLCK && f.l_start == 400 &&
			   f.l_len == 100 && f.l_pid == child,
		   "the child's READ lock 400-499: type %d %lld+%lld pid %d", f.l_type, (long long)f.l_start,
		   (long long)f.l_len, f.l_pid);
	zdtm_check(kill(child, SIGUSR1) == 0, "the child is gone: %s", strerror(errno));
	status = zdtm_wait_kid(child, "answer");
	zdtm_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child saw wrong locks (status %#x, see the log)",
		   status);
	zdtm_pass();
}
