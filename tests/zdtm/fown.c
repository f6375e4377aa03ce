/*
 * fown: the owner of open files for SIGIO (F_SETOWN, F_SETOWN_EX,
 * F_SETSIG) and signal-driven I/O (O_ASYNC).
 *
 * State (fd: what):
 *   10 a pipe's read end, O_ASYNC, owned by the root (F_SETOWN), signal
 *      SIGRTMIN+2 (F_SETSIG); 20 its write end
 *   11 a unix stream socket, O_ASYNC, owned by a thread of the root
 *      (F_OWNER_TID), SIGIO; 21 its peer
 *   12 a regular file owned by the root's process group (F_SETOWN with a
 *      negative pid), signal SIGUSR2, no O_ASYNC
 *   13 a pipe's read end, O_ASYNC, owned by a forked child (F_OWNER_PID),
 *      SIGRTMIN+3; 23 its write end
 *   14 a regular file owned by the root, set while the root's effective
 *      uid was 1000 (F_GETOWNER_UIDS: uid 0, euid 1000)
 * Verified: F_GETOWN_EX (type and pid), F_GETSIG and O_ASYNC of each fd,
 * F_GETOWNER_UIDS of fd 14; then data written to each O_ASYNC file
 * raises its signal in its owner, with si_fd naming the fd (the thread
 * and the child report what they got).
 */
#include "zdtm.h"

#include <pthread.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#ifndef F_GETOWNER_UIDS
#define F_GETOWNER_UIDS 17
#endif

struct owner {
	int fd;
	struct f_owner_ex own;
	int sig;
	int fl;
};

static struct owner owners[5];
static int thread_tid;
static pid_t child;
static volatile int thread_got, thread_fd = -1; /* set by the thread after SIGTERM */
static int child_reply[2];

static void set_owner(int fd, int type, pid_t pid, int sig, int async)
{
	struct f_owner_ex o = { .type = type, .pid = pid };

	if (fcntl(fd, F_SETOWN_EX, &o) || fcntl(fd, F_SETSIG, sig) ||
	    (async && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC)))
		zdtm_die("set owner of fd %d: %s", fd, strerror(errno));
}

static struct owner owner_of(int fd)
{
	struct owner o = { .fd = fd };

	if (fcntl(fd, F_GETOWN_EX, &o.own))
		o.own.type = -1;
	o.sig = fcntl(fd, F_GETSIG);
	o.fl = fcntl(fd, F_GETFL);
	return o;
}

/* Waits up to 10 s for `sig` (blocked), and returns its si_fd. */
static int wait_sig(int sig)
{
	sigset_t set;
	siginfo_t si;
	struct timespec ts = { 10, 0 };

	sigemptyset(&set);
	sigaddset(&set, sig);
	for (;;) {
		int r = sigtimedwait(&set, &si, &ts);
		if (r == sig)
			return si.si_fd;
		if (r < 0 && errno == EINTR)
			continue;
		return -1;
	}
}

static void *thread_main(void *arg)
{
	(void)arg;
	thread_tid = syscall(SYS_gettid);
	while (!zdtm_stop)
		zdtm_sleep_ms(20);
	/* The root writes to fd 21 once it has checked the owners. */
	thread_fd = wait_sig(SIGIO);
	thread_got = 1;
	return NULL;
}

static void child_main(void)
{
	int fd;

	/* Until the root writes, whenever that is (after restores). */
	while ((fd = wait_sig(SIGRTMIN + 3)) < 0)
		;
	if (write(child_reply[1], &fd, sizeof(fd)) != sizeof(fd))
		_exit(3);
	_exit(0);
}

static void sabotage(void)
{
	struct f_owner_ex o = { .type = F_OWNER_PID, .pid = 0 };

	switch (zdtm_sabotage) {
	case 1: /* the owner was lost */
		fcntl(10, F_SETOWN, 0);
		break;
	case 2: /* the signal was lost */
		fcntl(10, F_SETSIG, 0);
		break;
	case 3: /* O_ASYNC was lost */
		fcntl(13, F_SETFL, fcntl(13, F_GETFL) & ~O_ASYNC);
		break;
	case 4: /* the thread owner became the process */
		o.pid = getpid();
		fcntl(11, F_SETOWN_EX, &o);
		break;
	case 5: /* the owner's credentials became root's */
		fcntl(14, F_SETOWN, getpid());
		break;
	}
}

int main(void)
{
	int p[2], s[2], fd, status;
	uid_t uids[2];
	sigset_t set;
	pthread_t th;
	char path[4096];

	zdtm_init();
	/* Every signal of the test is blocked in every thread and taken
	 * with sigtimedwait. */
	sigemptyset(&set);
	sigaddset(&set, SIGIO);
	sigaddset(&set, SIGRTMIN + 2);
	sigaddset(&set, SIGRTMIN + 3);
	sigaddset(&set, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &set, NULL))
		zdtm_die("sigprocmask: %s", strerror(errno));

	/* fd 14 first, while the process has no other thread: seteuid. */
	zdtm_path(path, sizeof(path), "fown.file");
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || dup2(fd, 12) != 12 || dup2(fd, 99) != 99)
		zdtm_die("open %s: %s", path, strerror(errno));
	close(fd);
	fd = open(path, O_RDONLY);
	if (fd < 0 || dup2(fd, 14) != 14)
		zdtm_die("open %s: %s", path, strerror(errno));
	close(fd);
	close(99);
	if (setresuid(-1, 1000, -1))
		zdtm_die("seteuid 1000: %s", strerror(errno));
	if (fcntl(14, F_SETOWN, getpid()))
		zdtm_die("F_SETOWN as uid 1000: %s", strerror(errno));
	if (setresuid(-1, 0, -1))
		zdtm_die("seteuid 0: %s", strerror(errno));

	if (pipe(p) || dup2(p[0], 10) != 10 || dup2(p[1], 20) != 20)
		zdtm_die("pipe: %s", strerror(errno));
	close(p[0]), close(p[1]);
	set_owner(10, F_OWNER_PID, getpid(), SIGRTMIN + 2, 1);

	if (pthread_create(&th, NULL, thread_main, NULL))
		zdtm_die("pthread_create");
	while (!__atomic_load_n(&thread_tid, __ATOMIC_SEQ_CST))
		zdtm_sleep_ms(1);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || dup2(s[0], 11) != 11 || dup2(s[1], 21) != 21)
		zdtm_die("socketpair: %s", strerror(errno));
	close(s[0]), close(s[1]);
	set_owner(11, F_OWNER_TID, thread_tid, 0, 1);

	set_owner(12, F_OWNER_PGRP, getpgrp(), SIGUSR2, 0);

	if (pipe(p) || dup2(p[0], 13) != 13 || dup2(p[1], 23) != 23)
		zdtm_die("pipe: %s", strerror(errno));
	close(p[0]), close(p[1]);
	if (pipe(child_reply))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main();
	zdtm_kid(child);
	set_owner(13, F_OWNER_PID, child, SIGRTMIN + 3, 1);

	for (int i = 0; i < 5; i++)
		owners[i] = owner_of(10 + i);
	if (fcntl(14, F_GETOWNER_UIDS, uids) || uids[0] != 0 || uids[1] != 1000)
		zdtm_die("F_GETOWNER_UIDS at setup: %s (%u %u)", strerror(errno), uids[0], uids[1]);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < 5; i++) {
		struct owner now = owner_of(owners[i].fd);
		zdtm_check(now.own.type == owners[i].own.type && now.own.pid == owners[i].own.pid,
			   "fd %d owner type %d pid %d, was type %d pid %d", owners[i].fd, now.own.type, now.own.pid,
			   owners[i].own.type, owners[i].own.pid);
		zdtm_check(now.sig == owners[i].sig, "fd %d F_GETSIG %d, was %d", owners[i].fd, now.sig, owners[i].sig);
		zdtm_check(now.fl == owners[i].fl, "fd %d F_GETFL %#o, was %#o", owners[i].fd, now.fl, owners[i].fl);
	}
	zdtm_check(owners[1].own.type == F_OWNER_TID && owners[1].own.pid == thread_tid, "fd 11 owner at setup");
	zdtm_check(owners[2].own.type == F_OWNER_PGRP && owners[2].own.pid == getpgrp(), "fd 12 owner at setup");
	zdtm_check(fcntl(14, F_GETOWNER_UIDS, uids) == 0 && uids[0] == 0 && uids[1] == 1000,
		   "fd 14 owner credentials uid %u euid %u, were 0 and 1000", uids[0], uids[1]);

	/* Delivery: each write raises the owner's signal. */
	zdtm_check(write(20, "a", 1) == 1, "write fd 20: %s", strerror(errno));
	fd = wait_sig(SIGRTMIN + 2);
	zdtm_check(fd == 10, "SIGRTMIN+2 for fd 10: got si_fd %d", fd);
	zdtm_check(write(21, "b", 1) == 1, "write fd 21: %s", strerror(errno));
	{
		long long deadline = zdtm_now_ms() + 15000;
		while (!thread_got && zdtm_now_ms() < deadline)
			zdtm_sleep_ms(5);
	}
	/* F_SETSIG 0: a plain SIGIO, without si_fd. */
	zdtm_check(thread_got && thread_fd >= 0, "the owning thread got no SIGIO for fd 11");
	zdtm_check(write(23, "c", 1) == 1, "write fd 23: %s", strerror(errno));
	status = zdtm_wait_kid(child, "report its signal");
	zdtm_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %#x)", status);
	zdtm_check(read(child_reply[0], &fd, sizeof(fd)) == sizeof(fd) && fd == 13,
		   "the child got no SIGRTMIN+3 for fd 13 (si_fd %d)", fd);
	pthread_join(th, NULL);
	zdtm_pass();
}
