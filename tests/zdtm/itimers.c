/*
 * itimers: the three interval timers of setitimer.
 *
 * State: ITIMER_REAL every 20 ms with SIGALRM blocked (so it has expired,
 * its signal pending, and re-arms only when the signal is taken; the
 * pending sets the runner compares stay put); ITIMER_VIRTUAL
 * at 1000 s then every 7 s; ITIMER_PROF at 500 s then every 3 s (CPU time:
 * the program barely runs, so they do not expire); a child whose
 * ITIMER_REAL is a one-shot 1000 s alarm.
 * Verified: intervals exact; time left within bounds: lpm restores the time
 * left as it was at checkpoint (time spent checkpointed does not count, as
 * in CRIU), so the child's alarm has at least 1000 s minus the time it has
 * run left, and never more than 1000 s (CPU-time timers: plus a tick);
 * SIGALRM is taken twice with sigtimedwait, the timer re-armed between;
 * the child checks its own timer when asked (SIGUSR1).
 */
#include "zdtm.h"

#include <sys/time.h>

/* CPU-time timers are kept in ticks: the value read back may exceed the
 * value set by up to a tick. */
#define SLACK 20000

static volatile sig_atomic_t asked;

static void on_usr1(int sig)
{
	(void)sig;
	asked = 1;
}

static long long us(struct timeval tv)
{
	return tv.tv_sec * 1000000LL + tv.tv_usec;
}

static void set(int which, long long value_us, long long interval_us)
{
	struct itimerval it = { { interval_us / 1000000, interval_us % 1000000 }, { value_us / 1000000, value_us % 1000000 } };
	if (setitimer(which, &it, NULL))
		zdtm_die("setitimer(%d): %s", which, strerror(errno));
}

int main(void)
{
	struct sigaction sa;
	struct itimerval it;
	pid_t child;
	int status;
	struct timespec ts = { 10, 0 };
	sigset_t alrm;

	zdtm_init();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		long long start = zdtm_now_ms();
		set(ITIMER_REAL, 1000000000LL, 0);
		while (!asked)
			zdtm_sleep_ms(20);
		if (getitimer(ITIMER_REAL, &it))
			_exit(3);
		/* Never more than set; at least what is left of 1000 s after the
		 * time this process has run (checkpointed time excluded). */
		if (us(it.it_interval) != 0 || us(it.it_value) > 1000000000LL ||
		    us(it.it_value) < 1000000000LL - (zdtm_now_ms() - start) * 1000 - 1000000) {
			zdtm_log("child: ITIMER_REAL value %lld interval %lld", us(it.it_value), us(it.it_interval));
			_exit(1);
		}
		_exit(0);
	}
	zdtm_kid(child);
	sigemptyset(&alrm);
	sigaddset(&alrm, SIGALRM);
	sigprocmask(SIG_BLOCK, &alrm, NULL);
	set(ITIMER_REAL, 20000, 20000);
	set(ITIMER_VIRTUAL, 1000000000LL, 7000000);
	set(ITIMER_PROF, 500000000LL, 3000000);
	zdtm_sleep_ms(50);

	zdtm_ready();
	zdtm_wait();

	if (zdtm_sabotage == 1)
		set(ITIMER_VIRTUAL, 1000000000LL, 8000000);
	if (zdtm_sabotage == 2)
		set(ITIMER_REAL, 0, 0);
	if (zdtm_sabotage == 3)
		set(ITIMER_PROF, 600000000LL, 3000000);
	if (zdtm_sabotage == 4)
		kill(child, SIGKILL);

	getitimer(ITIMER_REAL, &it);
	zdtm_check(us(it.it_interval) == 20000 && us(it.it_value) <= 20000, "ITIMER_REAL value %lld interval %lld",
		   us(it.it_value), us(it.it_interval));
	zdtm_check(sigtimedwait(&alrm, NULL, &ts) == SIGALRM, "no SIGALRM within 10 s: %s", strerror(errno));
	getitimer(ITIMER_REAL, &it);
	{
		/* Under load the timer may have expired again since the
		 * sigtimedwait: then SIGALRM is pending and the kernel shows 0
		 * left until the signal is taken, which re-arms it. */
		sigset_t pend;
		sigpending(&pend);
		int again = sigismember(&pend, SIGALRM) == 1;
		zdtm_check(us(it.it_interval) == 20000 && (us(it.it_value) > 0 || again) && us(it.it_value) <= 20000,
			   "ITIMER_REAL after SIGALRM: value %lld interval %lld", us(it.it_value), us(it.it_interval));
	}
	zdtm_check(sigtimedwait(&alrm, NULL, &ts) == SIGALRM, "no second SIGALRM within 10 s: %s", strerror(errno));
	getitimer(ITIMER_VIRTUAL, &it);
	zdtm_check(us(it.it_interval) == 7000000 && us(it.it_value) > 990000000LL && us(it.it_value) <= 1000000000LL + SLACK,
		   "ITIMER_VIRTUAL value %lld interval %lld", us(it.it_value), us(it.it_interval));
	getitimer(ITIMER_PROF, &it);
	zdtm_check(us(it.it_interval) == 3000000 && us(it.it_value) > 490000000LL && us(it.it_value) <= 500000000LL + SLACK,
		   "ITIMER_PROF value %lld interval %lld", us(it.it_value), us(it.it_interval));
	zdtm_check(kill(child, SIGUSR1) == 0, "the child is gone: %s", strerror(errno));
	status = zdtm_wait_kid(child, "answer");
	zdtm_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's ITIMER_REAL is wrong (status %#x, see the log)",
		   status);
	zdtm_pass();
}
