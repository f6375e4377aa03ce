/*
 * pidfd_dead: pidfds of processes that have exited.
 *
 * State: pidfds of four children that ended and were reaped (exit code 7;
 * killed by SIGTERM, the pidfd non-blocking; killed by SIGABRT with no core
 * dumped; killed by SIGSEGV with a core dumped, in a directory of its own)
 * and of a fifth that exited with code 3 and stays a zombie.
 * Verified: fdinfo Pid (-1 for the reaped, the zombie's pid), poll events,
 * waitid(P_PIDFD) answering ECHILD for the reaped, pidfd_send_signal
 * answering ESRCH for the reaped (and as before for the zombie), the wait
 * status PIDFD_GET_INFO reports, flags; then waitid(P_PIDFD) reaps the
 * zombie with its status and its pidfd hangs up.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

struct info {
	uint64_t mask, cgroupid;
	uint32_t pid, tgid, ppid, ids[8];
	int32_t exit_code;
	uint32_t coredump_mask, spare;
};
#define GET_INFO _IOWR(0xFF, 11, struct info)
#define INFO_EXIT (1ULL << 3)

enum { REAPED_EXIT, REAPED_TERM, REAPED_ABRT, REAPED_CORE, ZOMBIE, N };
static int pf[N], rev[N], sig_err[N], fl_nb;
static pid_t kids[N];

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

static int revents(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (poll(&p, 1, 0) < 0)
		return -1;
	return p.revents;
}

static int send_err(int fd)
{
	return syscall(SYS_pidfd_send_signal, fd, 0, NULL, 0) == 0 ? 0 : errno;
}

static int exit_code(int fd)
{
	struct info i;

	memset(&i, 0, sizeof(i));
	i.mask = INFO_EXIT;
	if (ioctl(fd, GET_INFO, &i) || !(i.mask & INFO_EXIT))
		return -1;
	return i.exit_code;
}

static pid_t child(int how)
{
	pid_t pid = fork();

	if (pid < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (pid > 0)
		return pid;
	switch (how) {
	case REAPED_TERM:
		signal(SIGTERM, SIG_DFL);
		raise(SIGTERM);
		_exit(100);
	case REAPED_ABRT: {
		struct rlimit no = { 0, 0 };

		setrlimit(RLIMIT_CORE, &no);
		abort();
	}
	case REAPED_CORE: {
		struct rlimit rl;

		getrlimit(RLIMIT_CORE, &rl);
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_CORE, &rl) || chdir("cores"))
			_exit(100);
		signal(SIGSEGV, SIG_DFL);
		raise(SIGSEGV);
		_exit(101);
	}
	case REAPED_EXIT:
		_exit(7);
	default:
		_exit(3);
	}
}

static void sabotage(void)
{
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* the first pidfd names a live process */
		fd = pidfd_open(getpid(), 0);
		dup2(fd, pf[REAPED_EXIT]);
		break;
	case 2: /* the zombie was reaped */
		waitpid(kids[ZOMBIE], NULL, 0);
		break;
	case 3: /* flags lost */
		fcntl(pf[REAPED_TERM], F_SETFL, 0);
		break;
	}
}

int main(void)
{
	siginfo_t si;
	int i, st;

	zdtm_init();
	if (mkdir("cores", 0700) && errno != EEXIST)
		zdtm_die("mkdir cores: %s", strerror(errno));
	for (i = 0; i < N; i++) {
		kids[i] = child(i);
		pf[i] = pidfd_open(kids[i], i == REAPED_TERM ? O_NONBLOCK : 0);
		if (pf[i] < 0)
			zdtm_die("pidfd_open %d: %s", kids[i], strerror(errno));
	}
	for (i = 0; i < ZOMBIE; i++)
		if (waitpid(kids[i], &st, 0) != kids[i])
			zdtm_die("waitpid %d: %s", kids[i], strerror(errno));
	/* The zombie: wait until it has exited, without reaping it. */
	if (waitid(P_PID, kids[ZOMBIE], &si, WEXITED | WNOWAIT))
		zdtm_die("waitid WNOWAIT: %s", strerror(errno));
	for (i = 0; i < N; i++) {
		rev[i] = revents(pf[i]);
		sig_err[i] = send_err(pf[i]);
	}
	fl_nb = fcntl(pf[REAPED_TERM], F_GETFL);
	/* The core the fourth child wrote is of no use. */
	unlink("cores/core");
	if (exit_code(pf[REAPED_CORE]) != (SIGSEGV | 0x80))
		zdtm_die("the fourth child ended with %#x, not with a core (core_pattern must write into the working directory)",
			 exit_code(pf[REAPED_CORE]));
	if (exit_code(pf[REAPED_EXIT]) != 0x700 || exit_code(pf[REAPED_TERM]) != SIGTERM || exit_code(pf[REAPED_ABRT]) != SIGABRT)
		zdtm_die("PIDFD_GET_INFO: %#x %#x %#x", exit_code(pf[REAPED_EXIT]), exit_code(pf[REAPED_TERM]),
			 exit_code(pf[REAPED_ABRT]));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (i = 0; i < ZOMBIE; i++) {
		zdtm_check(pid_of(pf[i]) == -1, "pidfd %d names %ld, not a reaped process", i, pid_of(pf[i]));
		zdtm_check(sig_err[i] == ESRCH && send_err(pf[i]) == ESRCH, "pidfd_send_signal on pidfd %d: %d (was %d)", i,
			   send_err(pf[i]), sig_err[i]);
		errno = 0;
		zdtm_check(waitid(P_PIDFD, pf[i], &si, WEXITED | WNOHANG) < 0 && errno == ECHILD, "waitid on pidfd %d: %s", i,
			   strerror(errno));
	}
	for (i = 0; i < N; i++)
		zdtm_check(revents(pf[i]) == rev[i], "pidfd %d polls %#x, was %#x", i, revents(pf[i]), rev[i]);
	zdtm_check(rev[REAPED_EXIT] == (POLLIN | POLLHUP) && rev[ZOMBIE] == POLLIN, "poll at setup %#x %#x", rev[REAPED_EXIT],
		   rev[ZOMBIE]);
	zdtm_check(exit_code(pf[REAPED_CORE]) == (SIGSEGV | 0x80), "PIDFD_GET_INFO of the one that dumped core: %#x",
		   exit_code(pf[REAPED_CORE]));
	zdtm_check(exit_code(pf[REAPED_EXIT]) == 0x700 && exit_code(pf[REAPED_TERM]) == SIGTERM &&
			   exit_code(pf[REAPED_ABRT]) == SIGABRT,
		   "PIDFD_GET_INFO exit codes %#x %#x %#x", exit_code(pf[REAPED_EXIT]), exit_code(pf[REAPED_TERM]),
		   exit_code(pf[REAPED_ABRT]));
	zdtm_check(fcntl(pf[REAPED_TERM], F_GETFL) == fl_nb && (fl_nb & O_NONBLOCK), "F_GETFL %#o, was %#o",
		   fcntl(pf[REAPED_TERM], F_GETFL), fl_nb);
	zdtm_check(pid_of(pf[ZOMBIE]) == kids[ZOMBIE], "the zombie's pidfd names %ld, not %d", pid_of(pf[ZOMBIE]), kids[ZOMBIE]);
	zdtm_check(send_err(pf[ZOMBIE]) == sig_err[ZOMBIE], "pidfd_send_signal on the zombie: %d, was %d", send_err(pf[ZOMBIE]),
		   sig_err[ZOMBIE]);
	memset(&si, 0, sizeof(si));
	zdtm_check(waitid(P_PIDFD, pf[ZOMBIE], &si, WEXITED) == 0, "waitid(P_PIDFD) on the zombie: %s", strerror(errno));
	zdtm_check(si.si_pid == kids[ZOMBIE] && si.si_code == CLD_EXITED && si.si_status == 3, "waitid reaped %d (code %d status %d)",
		   si.si_pid, si.si_code, si.si_status);
	zdtm_check(revents(pf[ZOMBIE]) == (POLLIN | POLLHUP) && exit_code(pf[ZOMBIE]) == 0x300,
		   "the reaped zombie's pidfd polls %#x, exit code %#x", revents(pf[ZOMBIE]), exit_code(pf[ZOMBIE]));
	zdtm_pass();
}
