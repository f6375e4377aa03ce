/*
 * pipe_reopen: several open file descriptions of one pipe end, each with
 * its own status flags.
 *
 * State (fd: what), one pipe with 3000 bytes in it:
 *   10 the read end from pipe(2), blocking
 *   11 the read end reopened through /proc/self/fd/10, O_NONBLOCK
 *   12 the write end from pipe(2), O_NONBLOCK
 *   13 the write end reopened through /proc/self/fd/12, blocking
 *   14 a dup of 13 (the same description)
 *   15 the read end reopened read-write (O_RDWR) through /proc/self/fd
 * A forked child holds them all (inherited: the same descriptions).
 * Verified: F_GETFL of every fd (access mode and O_NONBLOCK); which fds
 * share a description and which do not (kcmp KCMP_FILE), in both
 * processes; the data, read through 11 (non-blocking: EAGAIN once
 * empty, while 10 would block); 15 both reads and writes the pipe; the
 * child reads what the root writes through 13.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/syscall.h>

#define KCMP_FILE 0
#define BYTES 3000

static const int fds[] = { 10, 11, 12, 13, 14, 15 };
#define NFDS 6
static int fl_before[NFDS];
static int cmd[2];
static pid_t child;

static int same(pid_t a, int fa, pid_t b, int fb)
{
	return syscall(SYS_kcmp, a, b, KCMP_FILE, fa, fb) == 0;
}

static void reopen(int from, int flags, int target)
{
	char p[64];
	int fd;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", from);
	fd = open(p, flags);
	if (fd < 0 || dup2(fd, target) != target)
		zdtm_die("reopen %s: %s", p, strerror(errno));
	close(fd);
}

/* Which pairs share a description: 13 and 14 only. */
static void check_sharing(pid_t pid, const char *who)
{
	for (int i = 0; i < NFDS; i++)
		for (int j = i + 1; j < NFDS; j++) {
			int want = fds[i] == 13 && fds[j] == 14;
			zdtm_check(same(pid, fds[i], pid, fds[j]) == want, "%s: fds %d and %d %s one open file description",
				   who, fds[i], fds[j], want ? "are no longer" : "became");
		}
}

static void child_main(void)
{
	static char buf[64];
	char c;

	/* One command: read 10 bytes through fd 10 and compare them. */
	while (read(cmd[0], &c, 1) < 0 && errno == EINTR)
		;
	for (int i = 0; i < NFDS; i++)
		if (fcntl(fds[i], F_GETFL) != fl_before[i]) {
			zdtm_log("child: fd %d F_GETFL %#o, was %#o", fds[i], fcntl(fds[i], F_GETFL), fl_before[i]);
			_exit(3);
		}
	if (read(10, buf, 10) != 10 || memcmp(buf, "from-root!", 10)) {
		zdtm_log("child: fd 10 did not give the root's bytes");
		_exit(4);
	}
	_exit(0);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the reopened read end lost O_NONBLOCK */
		fcntl(11, F_SETFL, fcntl(11, F_GETFL) & ~O_NONBLOCK);
		break;
	case 2: /* the reopened read end became the original description */
		dup2(10, 11);
		break;
	case 3: /* O_NONBLOCK of one description leaked onto the other */
		fcntl(13, F_SETFL, fcntl(13, F_GETFL) | O_NONBLOCK);
		break;
	case 4: /* the read-write description became write-only */
		dup2(12, 15);
		break;
	}
}

int main(void)
{
	static char buf[BYTES + 100], want[BYTES + 8];
	int p[2], status;
	ssize_t r;

	zdtm_init();
	if (pipe(p) || dup2(p[0], 10) != 10 || dup2(p[1], 12) != 12)
		zdtm_die("pipe: %s", strerror(errno));
	close(p[0]);
	close(p[1]);
	if (fcntl(12, F_SETFL, O_NONBLOCK))
		zdtm_die("F_SETFL: %s", strerror(errno));
	reopen(10, O_RDONLY | O_NONBLOCK, 11);
	reopen(12, O_WRONLY, 13);
	if (dup2(13, 14) != 14)
		zdtm_die("dup2: %s", strerror(errno));
	reopen(10, O_RDWR, 15);
	zdtm_fill(want, sizeof(want) - 8, 0x9100);
	if (write(12, want, BYTES) != BYTES)
		zdtm_die("write: %s", strerror(errno));
	for (int i = 0; i < NFDS; i++)
		fl_before[i] = fcntl(fds[i], F_GETFL);
	if ((fl_before[1] & O_NONBLOCK) == 0 || (fl_before[0] & O_NONBLOCK) || (fl_before[3] & O_NONBLOCK) ||
	    (fl_before[5] & O_ACCMODE) != O_RDWR)
		zdtm_die("flags at setup");
	if (pipe(cmd))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main();
	zdtm_kid(child);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < NFDS; i++)
		zdtm_check(fcntl(fds[i], F_GETFL) == fl_before[i], "fd %d F_GETFL %#o, was %#o", fds[i],
			   fcntl(fds[i], F_GETFL), fl_before[i]);
	check_sharing(getpid(), "root");
	check_sharing(child, "child");
	for (int i = 0; i < NFDS; i++)
		zdtm_check(same(getpid(), fds[i], child, fds[i]), "fd %d of the child is not the root's description", fds[i]);

	/* The data, through the non-blocking description. */
	size_t off = 0;
	for (;;) {
		r = read(11, buf + off, sizeof(buf) - off);
		if (r < 0 && errno == EAGAIN)
			break;
		zdtm_check(r > 0, "read fd 11: %s", r ? strerror(errno) : "EOF");
		off += r;
	}
	zdtm_check(off == BYTES, "the pipe held %zu bytes, expected %d", off, BYTES);
	zdtm_check(!memcmp(buf, want, BYTES), "the pipe's data differs");
	/* fd 10 is blocking: it must not return at once on the empty pipe. */
	{
		struct pollfd pf = { .fd = 10, .events = POLLIN };
		zdtm_check(poll(&pf, 1, 0) == 0, "the empty pipe polls readable");
	}
	/* The read-write description writes and reads the same pipe. */
	zdtm_check(write(15, "rw-ok", 5) == 5, "write fd 15: %s", strerror(errno));
	zdtm_check(read(11, buf, sizeof(buf)) == 5 && !memcmp(buf, "rw-ok", 5), "fd 11 did not read what fd 15 wrote");
	zdtm_check(write(12, "back", 4) == 4 && read(15, buf, sizeof(buf)) == 4 && !memcmp(buf, "back", 4),
		   "fd 15 did not read what fd 12 wrote");
	/* The child reads through its fd 10 what the blocking end writes. */
	zdtm_check(write(13, "from-root!", 10) == 10, "write fd 13: %s", strerror(errno));
	zdtm_check(write(cmd[1], "c", 1) == 1, "write to the child: %s", strerror(errno));
	status = zdtm_wait_kid(child, "read the pipe");
	zdtm_check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "the child failed (status %#x: 3 flags differ, 4 wrong data)", status);
	zdtm_pass();
}
