/*
 * signalfd: signalfds and the signals waiting for them.
 *
 * State: SIGUSR1, SIGUSR2 and SIGRTMIN+3 blocked; a non-blocking signalfd
 * for SIGUSR1 and SIGRTMIN+3 with SIGUSR1 pending and SIGRTMIN+3 queued
 * with value 42; a blocking close-on-exec signalfd for SIGUSR2, nothing
 * pending.
 * Verified: F_GETFL and FD_CLOEXEC; fdinfo sigmask of both; the first
 * reads SIGUSR1, then SIGRTMIN+3 with value 42, then EAGAIN; the second has
 * nothing, then receives a SIGUSR2 sent after restore.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/signalfd.h>

static int s1, s2, fl1, fl2;
static char mask1[64], mask2[64];

static void sigmask_of(int fd, char *out, size_t size)
{
	char path[64], text[1024];

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (zdtm_read_file(path, text, sizeof(text)) < 0 || !zdtm_field(text, "sigmask", out, size))
		snprintf(out, size, "?");
}

static void sabotage(void)
{
	sigset_t m;
	struct timespec zero = { 0, 0 };

	switch (zdtm_sabotage) {
	case 1: /* SIGUSR1 was taken */
		sigemptyset(&m);
		sigaddset(&m, SIGUSR1);
		sigtimedwait(&m, NULL, &zero);
		break;
	case 2: /* the first signalfd's mask lost the real-time signal */
		sigemptyset(&m);
		sigaddset(&m, SIGUSR1);
		signalfd(s1, &m, 0);
		break;
	case 3: /* a stray SIGUSR2 */
		kill(getpid(), SIGUSR2);
		break;
	case 4: /* flags lost */
		fcntl(s1, F_SETFL, 0);
		break;
	}
}

int main(void)
{
	struct signalfd_siginfo si;
	struct pollfd pfd;
	sigset_t m;
	union sigval val = { .sival_int = 42 };
	char now[64];

	zdtm_init();
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1);
	sigaddset(&m, SIGUSR2);
	sigaddset(&m, SIGRTMIN + 3);
	if (sigprocmask(SIG_BLOCK, &m, NULL))
		zdtm_die("sigprocmask: %s", strerror(errno));
	sigdelset(&m, SIGUSR2);
	s1 = signalfd(-1, &m, SFD_NONBLOCK);
	sigemptyset(&m);
	sigaddset(&m, SIGUSR2);
	s2 = signalfd(-1, &m, SFD_CLOEXEC);
	if (s1 < 0 || s2 < 0)
		zdtm_die("signalfd: %s", strerror(errno));
	if (kill(getpid(), SIGUSR1) || sigqueue(getpid(), SIGRTMIN + 3, val))
		zdtm_die("send: %s", strerror(errno));
	fl1 = fcntl(s1, F_GETFL);
	fl2 = fcntl(s2, F_GETFL);
	sigmask_of(s1, mask1, sizeof(mask1));
	sigmask_of(s2, mask2, sizeof(mask2));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(fcntl(s1, F_GETFL) == fl1 && fcntl(s2, F_GETFL) == fl2, "F_GETFL %#o %#o, was %#o %#o", fcntl(s1, F_GETFL),
		   fcntl(s2, F_GETFL), fl1, fl2);
	zdtm_check(fcntl(s1, F_GETFD) == 0 && fcntl(s2, F_GETFD) == FD_CLOEXEC, "FD_CLOEXEC changed");
	sigmask_of(s1, now, sizeof(now));
	zdtm_check(!strcmp(now, mask1), "first sigmask %s, was %s", now, mask1);
	sigmask_of(s2, now, sizeof(now));
	zdtm_check(!strcmp(now, mask2), "second sigmask %s, was %s", now, mask2);
	zdtm_check(read(s1, &si, sizeof(si)) == sizeof(si), "read SIGUSR1: %s", strerror(errno));
	zdtm_check(si.ssi_signo == SIGUSR1, "first read signal %u, expected SIGUSR1", si.ssi_signo);
	zdtm_check(read(s1, &si, sizeof(si)) == sizeof(si), "read SIGRTMIN+3: %s", strerror(errno));
	zdtm_check(si.ssi_signo == (unsigned)SIGRTMIN + 3 && si.ssi_int == 42, "second read signal %u value %d", si.ssi_signo,
		   si.ssi_int);
	zdtm_check(read(s1, &si, sizeof(si)) < 0 && errno == EAGAIN, "a third signal on the first signalfd");
	pfd.fd = s2;
	pfd.events = POLLIN;
	zdtm_check(poll(&pfd, 1, 0) == 0, "the second signalfd has a signal before it was sent");
	kill(getpid(), SIGUSR2);
	zdtm_check(poll(&pfd, 1, 10000) == 1, "SIGUSR2 not reported within 10 s");
	zdtm_check(read(s2, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR2, "read SIGUSR2: %s", strerror(errno));
	zdtm_pass();
}
