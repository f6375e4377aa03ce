/*
 * fd_table: a file descriptor table shared between processes
 * (clone(CLONE_FILES)).
 *
 * State: the root clones child C with CLONE_FILES; C clones D with
 * CLONE_FILES (all three share one table) and forks G (a table of its
 * own, a copy). Each child serves commands from the root through a pipe
 * of its own, answering through another; D and G die with C
 * (PR_SET_PDEATHSIG).
 * Verified: kcmp(KCMP_FILES) says the root, C and D share one table and G
 * does not; after restore an fd C opens is open in the root and in D, an
 * fd the root closes is closed in C and D, and neither is seen in G.
 */
#include "zdtm.h"

#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define KCMP_FILES 2
#define NEW_FD 90

enum { C, D, G, NKIDS };
static const char *names[NKIDS] = { "C", "D", "G" };
static int cmd[NKIDS][2], reply[NKIDS][2];
static pid_t pids[NKIDS];
static char stack_c[256 * 1024] __attribute__((aligned(16)));
static char stack_d[256 * 1024] __attribute__((aligned(16)));

static int shares(pid_t a, pid_t b)
{
	return syscall(SYS_kcmp, a, b, KCMP_FILES, 0, 0) == 0;
}

/* Commands: 'o' open /dev/null at NEW_FD, 'q' is NEW_FD open (answer
 * 'y'/'n'), 'u' unshare the table (sabotage). */
static void serve(int me)
{
	char c, a;

	for (;;) {
		ssize_t r = read(cmd[me][0], &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 1)
			_exit(3);
		switch (c) {
		case 'o': {
			int fd = open("/dev/null", O_RDONLY);
			a = (fd >= 0 && dup2(fd, NEW_FD) == NEW_FD) ? 'y' : 'n';
			close(fd);
			break;
		}
		case 'q':
			a = fcntl(NEW_FD, F_GETFD) >= 0 ? 'y' : 'n';
			break;
		case 'u':
			a = unshare(CLONE_FILES) == 0 ? 'y' : 'n';
			break;
		default:
			a = '?';
		}
		if (write(reply[me][1], &a, 1) != 1)
			_exit(4);
	}
}

static int run_d(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	serve(D);
	return 0;
}

static int run_c(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	pids[D] = clone(run_d, stack_d + sizeof(stack_d), CLONE_FILES | SIGCHLD, NULL);
	if (pids[D] < 0)
		_exit(5);
	pids[G] = fork();
	if (pids[G] < 0)
		_exit(6);
	if (pids[G] == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		serve(G);
	}
	/* Tell the root who they are: C shares its table, so its pipes are
	 * the root's too. */
	if (write(reply[C][1], pids + D, 2 * sizeof(pid_t)) != 2 * sizeof(pid_t))
		_exit(7);
	serve(C);
	return 0;
}

static char ask(int who, char c)
{
	char a;
	long long deadline = zdtm_now_ms() + 10000;

	zdtm_check(write(cmd[who][1], &c, 1) == 1, "write to %s: %s", names[who], strerror(errno));
	for (;;) {
		ssize_t r = read(reply[who][0], &a, 1);
		if (r == 1)
			return a;
		zdtm_check(r < 0 && errno == EAGAIN, "%s: %s", names[who], r ? strerror(errno) : "EOF");
		zdtm_check(zdtm_now_ms() < deadline, "%s did not answer within 10 s", names[who]);
		zdtm_sleep_ms(2);
	}
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* C got a table of its own */
		ask(C, 'u');
		break;
	case 2: /* D got a table of its own */
		ask(D, 'u');
		break;
	}
}

int main(void)
{
	zdtm_init();
	for (int i = 0; i < NKIDS; i++)
		if (pipe(cmd[i]) || pipe2(reply[i], O_NONBLOCK))
			zdtm_die("pipe: %s", strerror(errno));
	pids[C] = clone(run_c, stack_c + sizeof(stack_c), CLONE_FILES | SIGCHLD, NULL);
	if (pids[C] < 0)
		zdtm_die("clone: %s", strerror(errno));
	zdtm_kid(pids[C]);
	{
		long long deadline = zdtm_now_ms() + 10000;
		ssize_t r;
		while ((r = read(reply[C][0], pids + D, 2 * sizeof(pid_t))) < 0 && errno == EAGAIN &&
		       zdtm_now_ms() < deadline)
			zdtm_sleep_ms(2);
		if (r != 2 * sizeof(pid_t))
			zdtm_die("C did not report its children");
	}
	if (!shares(getpid(), pids[C]) || !shares(getpid(), pids[D]) || shares(getpid(), pids[G]))
		zdtm_die("tables at setup");

	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(shares(getpid(), pids[C]), "the root and C no longer share their fd table");
	zdtm_check(shares(getpid(), pids[D]), "the root and D no longer share their fd table");
	zdtm_check(!shares(getpid(), pids[G]), "G shares the root's fd table");
	zdtm_check(fcntl(NEW_FD, F_GETFD) < 0, "fd %d is open before the test", NEW_FD);
	zdtm_check(ask(C, 'o') == 'y', "C could not open fd %d", NEW_FD);
	zdtm_check(fcntl(NEW_FD, F_GETFD) >= 0, "the fd C opened is not open in the root");
	zdtm_check(ask(D, 'q') == 'y', "the fd C opened is not open in D");
	zdtm_check(ask(G, 'q') == 'n', "the fd C opened is open in G");
	close(NEW_FD);
	zdtm_check(ask(C, 'q') == 'n', "the fd the root closed is still open in C");
	zdtm_check(ask(D, 'q') == 'n', "the fd the root closed is still open in D");
	zdtm_pass();
}
