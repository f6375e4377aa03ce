/*
 * pidfd: pidfds of processes of the tree.
 *
 * State: a child that sleeps; a pidfd of it; a second, non-blocking,
 * close-on-exec pidfd of it; a pidfd of the root itself.
 * Verified: fdinfo Pid of each (the child's pid, the root's pid); flags;
 * the child is not reported as exited; pidfd_send_signal(SIGKILL) through
 * the first kills the child, the pidfd becomes readable and waitid(P_PIDFD)
 * reaps it with its pid.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/syscall.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static int pf, pf_nb, pf_self, fl_nb;
static pid_t child;

static int pidfd_open(pid_t pid, unsigned int flags)
{
	return syscall(SYS_pidfd_open, pid, flags);
}

static long pid_of(int fd)
{
	char path[64], text[1024], v[32];

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (zdtm_read_file(path, text, sizeof(text)) < 0 || !zdtm_field(text, "Pid", v, sizeof(v)))
		return -2;
	return atol(v);
}

static void sabotage(void)
{
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* the first pidfd names the root instead */
		fd = pidfd_open(getpid(), 0);
		dup2(fd, pf);
		break;
	case 2: /* flags lost */
		fcntl(pf_nb, F_SETFL, 0);
		break;
	case 3: /* the child died */
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		break;
	}
}

int main(void)
{
	struct pollfd p;
	siginfo_t si;

	zdtm_init();
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		for (;;)
			pause();
	}
	zdtm_kid(child);
	pf = pidfd_open(child, 0);
	pf_nb = pidfd_open(child, O_NONBLOCK);
	pf_self = pidfd_open(getpid(), 0);
	/* pidfd_open sets FD_CLOEXEC: one of them goes without. */
	if (pf < 0 || pf_nb < 0 || pf_self < 0 || fcntl(pf, F_SETFD, 0))
		zdtm_die("pidfd_open: %s", strerror(errno));
	fl_nb = fcntl(pf_nb, F_GETFL);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(pid_of(pf) == child && pid_of(pf_nb) == child, "pidfds name %ld and %ld, not the child %d", pid_of(pf),
		   pid_of(pf_nb), child);
	zdtm_check(pid_of(pf_self) == getpid(), "the own pidfd names %ld, not %d", pid_of(pf_self), getpid());
	zdtm_check(fcntl(pf_nb, F_GETFL) == fl_nb && (fl_nb & O_NONBLOCK), "F_GETFL %#o, was %#o", fcntl(pf_nb, F_GETFL), fl_nb);
	zdtm_check(fcntl(pf_nb, F_GETFD) == FD_CLOEXEC && fcntl(pf, F_GETFD) == 0, "FD_CLOEXEC changed");
	p.fd = pf;
	p.events = POLLIN;
	zdtm_check(poll(&p, 1, 0) == 0, "the child is reported as exited");
	zdtm_check(syscall(SYS_pidfd_send_signal, pf, SIGKILL, NULL, 0) == 0, "pidfd_send_signal: %s", strerror(errno));
	zdtm_check(poll(&p, 1, 10000) == 1, "the pidfd did not become readable within 10 s");
	memset(&si, 0, sizeof(si));
	zdtm_check(waitid(P_PIDFD, pf, &si, WEXITED) == 0, "waitid(P_PIDFD): %s", strerror(errno));
	zdtm_nkids = 0;
	zdtm_check(si.si_pid == child && si.si_code == CLD_KILLED, "waitid reaped %d (code %d)", si.si_pid, si.si_code);
	zdtm_pass();
}
