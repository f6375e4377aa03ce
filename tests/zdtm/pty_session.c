/*
 * pty_session: a pseudo-terminal that is the controlling terminal of a
 * whole session, as a shell with jobs (or tmux's panes) holds one.
 *
 * State: the root holds the master. Its child L leads a session with the
 * slave as controlling terminal (fds 0 to 2) and forks: A, in L's group;
 * B, a group of its own, the terminal's foreground group (a job in the
 * foreground), which forks D into that group; C, in L's group, which let
 * the terminal go (TIOCNOTTY, as a daemonizing child does). All wait on a
 * pipe of their own for questions.
 * Verified: after restore the root sees through the master that L's
 * session owns the terminal and B's group is in the foreground; each
 * member checks its session and group, whether it has a controlling
 * terminal (stat's tty_nr, /dev/tty, tcgetsid) and that it is the pty on
 * its fd 0, and its foreground group.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <termios.h>

enum { L, A, B, D, C, MEMBERS };
static const char *names = "LABDC";

static int master;
static int ask[MEMBERS][2], ans[2], pids[2];
static pid_t pid_of[MEMBERS];

/* stat's tty_nr of this process. */
static unsigned long tty_nr(void)
{
	char buf[1024], *p;
	unsigned long nr = 0;
	int fd = open("/proc/self/stat", O_RDONLY), n;

	if (fd < 0)
		return ~0UL;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return ~0UL;
	buf[n] = 0;
	p = strrchr(buf, ')');
	/* ") S ppid pgrp session tty_nr" */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %lu", &nr) != 1)
		return ~0UL;
	return nr;
}

/* What tty_nr shows for the device of fd 0. */
static unsigned long encoded(void)
{
	struct stat st;

	if (fstat(0, &st) < 0)
		return ~0UL;
	return (minor(st.st_rdev) & 0xff) | (major(st.st_rdev) << 8) | ((minor(st.st_rdev) & ~0xffUL) << 12);
}

/* A question: what to do, and B's pid (A was born before B). */
struct question {
	char c;
	pid_t b;
};

static char check(int who)
{
	int has = who != C, fd;
	pid_t group = who == B || who == D ? pid_of[B] : pid_of[L];

	if (getsid(0) != pid_of[L])
		return 's';
	if (getpgrp() != group)
		return 'g';
	if (tty_nr() != (has ? encoded() : 0))
		return 't';
	fd = open("/dev/tty", O_RDWR | O_NOCTTY);
	if ((fd >= 0) != has)
		return 'o';
	if (fd >= 0)
		close(fd);
	if (!has)
		return tcgetsid(0) < 0 && errno == ENOTTY ? 'Y' : 'n';
	if (tcgetsid(0) != pid_of[L])
		return 'S';
	if (tcgetpgrp(0) != pid_of[B])
		return 'p';
	return 'Y';
}

/* A member: answers questions on its pipe until killed. */
static void serve(int who)
{
	struct question q;
	char c, out[2];

	pid_of[who] = getpid();
	if (write(pids[1], &who, sizeof(who)) != sizeof(who))
		_exit(5);
	for (;;) {
		ssize_t r = read(ask[who][0], &q, sizeof(q));

		if (r < 0 && errno == EINTR)
			continue;
		if (r != sizeof(q))
			_exit(6);
		c = q.c;
		pid_of[B] = q.b;
		out[0] = names[who];
		if (c == '?')
			out[1] = check(who);
		else if (c == 'f') /* sabotage: the leader takes the foreground back */
			out[1] = tcsetpgrp(0, getpgrp()) == 0 ? 'k' : 'x';
		else if (c == 'n') /* sabotage: the member lets its terminal go */
			out[1] = ioctl(0, TIOCNOTTY) == 0 ? 'k' : 'x';
		else
			out[1] = '?';
		if (write(ans[1], out, 2) != 2)
			_exit(7);
	}
}

static pid_t spawn(int who)
{
	pid_t pid = fork();

	if (pid < 0)
		_exit(8);
	if (pid > 0)
		return pid;
	pid_of[who] = getpid();
	if (who == B && setpgid(0, 0) < 0)
		_exit(9);
	if (who == C && ioctl(0, TIOCNOTTY) < 0)
		_exit(10);
	if (who == B)
		pid_of[D] = spawn(D);
	serve(who);
	_exit(0);
}

static void leader(const char *name)
{
	int fd;

	signal(SIGTERM, SIG_DFL);
	/* The leader moves its job to the foreground, as a shell does. */
	signal(SIGTTOU, SIG_IGN);
	if (setsid() < 0)
		_exit(3);
	fd = open(name, O_RDWR);
	if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) < 0)
		_exit(4);
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
	close(master);
	pid_of[L] = getpid();
	pid_of[A] = spawn(A);
	pid_of[B] = spawn(B);
	pid_of[C] = spawn(C);
	/* B's group exists once B has run setpgid: B and the leader race for
	 * it, as a shell and its job do. */
	setpgid(pid_of[B], pid_of[B]);
	if (tcsetpgrp(0, pid_of[B]) < 0)
		_exit(11);
	serve(L);
}

/* Sends c to member who and reads its answer within 5 s. */
static char talk(int who, char c)
{
	struct pollfd p = { .fd = ans[0], .events = POLLIN };
	struct question q = { .c = c, .b = pid_of[B] };
	char out[2];

	if (write(ask[who][1], &q, sizeof(q)) != sizeof(q))
		return 'w';
	if (poll(&p, 1, 5000) <= 0 || read(ans[0], out, 2) != 2)
		return 'r';
	return out[0] == names[who] ? out[1] : 'm';
}

int main(void)
{
	char name[64];
	pid_t child;
	int who;

	zdtm_init();
	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 || ptsname_r(master, name, sizeof(name)) != 0)
		zdtm_die("posix_openpt: %s", strerror(errno));
	for (who = 0; who < MEMBERS; who++)
		if (pipe(ask[who]) < 0)
			zdtm_die("pipe: %s", strerror(errno));
	if (pipe(ans) < 0 || pipe(pids) < 0)
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		leader(name);
	zdtm_kid(child);
	pid_of[L] = child;
	/* Every member says who it is; the root learns their pids. */
	for (int n = 0; n < MEMBERS; n++) {
		struct pollfd p = { .fd = pids[0], .events = POLLIN };
		if (poll(&p, 1, 5000) <= 0 || read(pids[0], &who, sizeof(who)) != sizeof(who) || who < 0 || who >= MEMBERS)
			zdtm_die("member %d did not start", n);
	}
	/* Their pids: the leader's children in the order it forked them, and
	 * B's child. */
	for (who = 0; who < MEMBERS; who++)
		close(ask[who][0]);
	close(ans[1]);
	close(pids[1]);
	{
		char path[64], buf[256];
		int fd, n;
		pid_t a, b, c, d;

		snprintf(path, sizeof(path), "/proc/%d/task/%d/children", child, child);
		fd = open(path, O_RDONLY);
		n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (n <= 0 || (buf[n] = 0, sscanf(buf, "%d %d %d", &a, &b, &c) != 3))
			zdtm_die("read %s", path);
		close(fd);
		snprintf(path, sizeof(path), "/proc/%d/task/%d/children", b, b);
		fd = open(path, O_RDONLY);
		n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (n <= 0 || (buf[n] = 0, sscanf(buf, "%d", &d) != 1))
			zdtm_die("read %s", path);
		close(fd);
		pid_of[A] = a;
		pid_of[B] = b;
		pid_of[C] = c;
		pid_of[D] = d;
		for (who = A; who < MEMBERS; who++)
			zdtm_kid(pid_of[who]);
	}
	zdtm_check(talk(L, '?') == 'Y', "setup: the leader is wrong");
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1)
		zdtm_check(talk(L, 'f') == 'k', "sabotage 1 failed");
	if (zdtm_sabotage == 2)
		zdtm_check(talk(A, 'n') == 'k', "sabotage 2 failed");

	zdtm_check(tcgetsid(master) == pid_of[L], "the terminal's session is %d, not the leader %d", tcgetsid(master), pid_of[L]);
	zdtm_check(tcgetpgrp(master) == pid_of[B], "the foreground group is %d, not B's %d", tcgetpgrp(master), pid_of[B]);
	for (who = 0; who < MEMBERS; who++) {
		char v = talk(who, '?');

		zdtm_check(v == 'Y',
			   "%c (pid %d) reports %c (s session, g group, t tty_nr, o /dev/tty, S tcgetsid, p foreground "
			   "group, n a terminal it let go; r no answer)",
			   names[who], pid_of[who], v);
	}
	zdtm_pass();
}
