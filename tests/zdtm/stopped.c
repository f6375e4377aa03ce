/*
 * stopped: processes stopped by job control signals.
 *
 * State: child A stopped itself with SIGSTOP (raise); child B, two
 * threads, a group of its own (a stopped job), stopped by SIGTSTP from
 * the root while its second thread counts in memory shared with the root.
 * Verified: after restore every thread of A and B is stopped ('T' in
 * /proc), a stop reported to the root (if any is) names the right signal,
 * and B's counter stands still; on SIGCONT, A goes on past its raise and
 * says so, and B's thread counts again.
 */
#include "zdtm.h"

#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>

static volatile unsigned long *counter;
static int said[2];

static void *count(void *arg)
{
	(void)arg;
	for (;;) {
		__atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
		usleep(1000);
	}
	return NULL;
}

/* Whether every thread of pid is stopped ('T'). */
static int all_stopped(pid_t pid)
{
	char path[320], buf[512], *p;
	int n = 0, stopped = 0;
	DIR *d;
	struct dirent *e;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		int fd, len;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/stat", pid, e->d_name);
		fd = open(path, O_RDONLY);
		len = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (fd >= 0)
			close(fd);
		if (len <= 0)
			continue;
		buf[len] = 0;
		p = strrchr(buf, ')');
		n++;
		if (p && p[2] == 'T')
			stopped++;
	}
	closedir(d);
	return n > 0 && n == stopped;
}

/* Waits up to 10 s for every thread of pid to be stopped. */
static int wait_stopped(pid_t pid)
{
	long long deadline = zdtm_now_ms() + 10000;

	while (!all_stopped(pid))
		if (zdtm_now_ms() > deadline)
			return 0;
		else
			zdtm_sleep_ms(5);
	return 1;
}

/* A stop of pid waiting to be reported, if any, names sig. */
static int stop_reported_as(pid_t pid, int sig)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, pid, &si, WSTOPPED | WNOHANG | WNOWAIT) < 0)
		return 0;
	return si.si_pid == 0 || (si.si_code == CLD_STOPPED && si.si_status == sig);
}

int main(void)
{
	pid_t a, b;
	pthread_t t;
	unsigned long before;
	char c;

	zdtm_init();
	counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (counter == MAP_FAILED || pipe(said) < 0)
		zdtm_die("setup: %s", strerror(errno));
	a = fork();
	if (a < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (a == 0) {
		raise(SIGSTOP);
		if (write(said[1], "A", 1) != 1)
			_exit(3);
		for (;;)
			pause();
	}
	zdtm_kid(a);
	b = fork();
	if (b < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (b == 0) {
		/* A group whose parent is in another group of the session: not
		 * orphaned, so SIGTSTP stops it. */
		setpgid(0, 0);
		signal(SIGTSTP, SIG_DFL);
		if (pthread_create(&t, NULL, count, NULL))
			_exit(4);
		for (;;)
			pause();
	}
	zdtm_kid(b);
	setpgid(b, b);
	while (__atomic_load_n(counter, __ATOMIC_RELAXED) == 0)
		zdtm_sleep_ms(1);
	if (kill(b, SIGTSTP) < 0)
		zdtm_die("kill: %s", strerror(errno));
	if (!wait_stopped(a) || !wait_stopped(b))
		zdtm_die("the children did not stop");
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1) /* A runs on */
		kill(a, SIGCONT);
	if (zdtm_sabotage == 2) /* B's thread counts on */
		kill(b, SIGCONT);

	zdtm_check(all_stopped(a), "A is not stopped");
	zdtm_check(all_stopped(b), "B is not stopped in every thread");
	zdtm_check(stop_reported_as(a, SIGSTOP), "A's stop is reported with another signal");
	zdtm_check(stop_reported_as(b, SIGTSTP), "B's stop is reported with another signal");
	before = __atomic_load_n(counter, __ATOMIC_RELAXED);
	zdtm_check(all_stopped(b) && __atomic_load_n(counter, __ATOMIC_RELAXED) == before, "B's thread counts while stopped");

	kill(a, SIGCONT);
	kill(b, SIGCONT);
	{
		struct pollfd p = { .fd = said[0], .events = POLLIN };

		zdtm_check(poll(&p, 1, 10000) == 1 && read(said[0], &c, 1) == 1 && c == 'A', "A did not go on after SIGCONT");
	}
	{
		long long deadline = zdtm_now_ms() + 10000;

		while (__atomic_load_n(counter, __ATOMIC_RELAXED) == before)
			zdtm_check(zdtm_now_ms() < deadline, "B's thread does not count after SIGCONT");
	}
	zdtm_pass();
}
