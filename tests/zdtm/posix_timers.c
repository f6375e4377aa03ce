/*
 * posix_timers: timer_create timers on several clocks with every kind of
 * notification, periodic ones, a gap in the ids and an overrun.
 *
 * State (kernel ids, created in order, id 2 deleted to leave a gap):
 *   0 CLOCK_REALTIME  SIGEV_SIGNAL SIGRTMIN   value 0x1111, one-shot 1000 s
 *   1 CLOCK_MONOTONIC SIGEV_SIGNAL SIGRTMIN+1 value 0x2222, every 10 ms
 *   3 CLOCK_BOOTTIME  SIGEV_THREAD_ID (worker) SIGRTMIN+2 value 0x3333, every 15 ms
 *   4 CLOCK_MONOTONIC SIGEV_NONE, 500 s then every 7 s
 *   5 CLOCK_PROCESS_CPUTIME_ID SIGEV_NONE, 100 s of CPU time
 *   6 CLOCK_MONOTONIC SIGEV_SIGNAL SIGRTMIN+3 value
 *     0x6666, one-shot 1 ms: expired, its signal pending
 * Every signal is blocked in every thread, so the timers' signals stay
 * pending (with overruns) and the pending sets stay put.
 * Verified: /proc/self/timers lists exactly these ids with their signal,
 * value, notification (pid, or the worker's tid) and clock; intervals are
 * exact and the time left is within bounds (time spent checkpointed does
 * not count, see docs/support.md); timer 1's pending signal carries an
 * overrun of at least 5 equal to timer_getoverrun and the timer fires again;
 * timer 6's signal comes once; the worker takes two signals of timer 3;
 * every signal carries SI_TIMER, its timer id and value.
 */
#include "zdtm.h"

#include <pthread.h>
#include <sys/syscall.h>

#define NTIMERS 7

static volatile int go, worker_done;
static char worker_err[256];
static pthread_t worker;
static volatile pid_t worker_tid;
static char text[8192];

static int k_create(clockid_t clock, int notify, int signo, long value, pid_t tid)
{
	struct sigevent sev;
	int id = -1;

	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = notify;
	sev.sigev_signo = signo;
	sev.sigev_value.sival_ptr = (void *)value;
	sev._sigev_un._tid = tid;
	if (syscall(SYS_timer_create, clock, &sev, &id))
		zdtm_die("timer_create(clock %d): %s", (int)clock, strerror(errno));
	return id;
}

static void k_set(int id, long value_ns, long interval_ns)
{
	struct itimerspec it = {
		{ interval_ns / 1000000000L, interval_ns % 1000000000L },
		{ value_ns / 1000000000L, value_ns % 1000000000L },
	};
	if (syscall(SYS_timer_settime, id, 0, &it, NULL))
		zdtm_die("timer_settime(%d): %s", id, strerror(errno));
}

static long long ns_of(struct timespec ts)
{
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long now_ns(clockid_t clock)
{
	struct timespec t;

	clock_gettime(clock, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Whether `v`, read at t2, can be what is left of a one-shot `value` set
 * at a1 (both on the timer's clock): no more than was set, no less than
 * that minus the time since. (A checkpoint keeps what was left, so time
 * spent checkpointed does not count.) */
static int counts_down(long long v, long long value, long long a1, long long t2)
{
	return v > 0 && v <= value && v >= value - (t2 - a1);
}

/* Waits up to 10 s for signal sig of timer id with value; NULL or why not. */
static const char *expect_signal(int sig, int id, long value, siginfo_t *si, char *msg, size_t size)
{
	struct timespec ts = { 10, 0 };
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, sig);
	if (sigtimedwait(&set, si, &ts) != sig)
		return snprintf(msg, size, "timer %d: no signal within 10 s: %s", id, strerror(errno)), msg;
	if (si->si_code != SI_TIMER || si->si_timerid != id || (long)si->si_value.sival_ptr != value)
		return snprintf(msg, size, "timer %d: signal with code %d timer %d value %p", id, si->si_code,
				si->si_timerid, si->si_value.sival_ptr), msg;
	return NULL;
}

/* The worker: every signal blocked; when told, takes two signals of timer 3. */
static void *work(void *arg)
{
	const char *err;
	siginfo_t si;
	(void)arg;
	worker_tid = syscall(SYS_gettid);
	while (!go)
		zdtm_sleep_ms(20);
	for (int i = 0; i < 2; i++)
		if ((err = expect_signal(SIGRTMIN + 2, 3, 0x3333, &si, worker_err, sizeof(worker_err))))
			break;
	worker_done = 1;
	return NULL;
}

/* Expected line set of /proc/self/timers for one timer. */
static int has_timer(int id, int signo, long value, const char *notify, pid_t who, int clock)
{
	char want[256];
	snprintf(want, sizeof(want), "ID: %d\nsignal: %d/%016lx\nnotify: %s.%d\nClockID: %d\n", id, signo, value,
		 notify, who, clock);
	return strstr(text, want) != NULL;
}

static void gettime(int id, long long *value, long long *interval)
{
	struct itimerspec it;
	zdtm_check(syscall(SYS_timer_gettime, id, &it) == 0, "timer_gettime(%d): %s", id, strerror(errno));
	*value = ns_of(it.it_value);
	*interval = ns_of(it.it_interval);
}

int main(void)
{
	const char *err;
	char msg[512];
	siginfo_t si;
	sigset_t set;
	long long v, iv, deadline, t2, armed[2];
	int n, over;
	pid_t me = getpid();

	zdtm_init();
	sigfillset(&set);
	sigdelset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);
	if (pthread_create(&worker, NULL, work, NULL))
		zdtm_die("pthread_create");
	while (!worker_tid)
		zdtm_sleep_ms(1);

	if (k_create(CLOCK_REALTIME, SIGEV_SIGNAL, SIGRTMIN, 0x1111, 0) != 0 ||
	    k_create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 1, 0x2222, 0) != 1 ||
	    k_create(CLOCK_MONOTONIC, SIGEV_NONE, SIGALRM, 0, 0) != 2 ||
	    k_create(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 2, 0x3333, worker_tid) != 3 ||
	    k_create(CLOCK_MONOTONIC, SIGEV_NONE, SIGALRM, 0x4444, 0) != 4 ||
	    k_create(CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, SIGALRM, 0x5555, 0) != 5 ||
	    k_create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 3, 0x6666, 0) != 6)
		zdtm_die("timer ids are not 0..6 in order");
	if (syscall(SYS_timer_delete, 2))
		zdtm_die("timer_delete(2): %s", strerror(errno));
	armed[0] = now_ns(CLOCK_REALTIME);
	k_set(0, 1000000000000L, 0);
	k_set(1, 10000000L, 10000000L);
	k_set(3, 15000000L, 15000000L);
	armed[1] = now_ns(CLOCK_MONOTONIC);
	k_set(4, 500000000000L, 7000000000L);
	k_set(5, 100000000000L, 0);
	k_set(6, 1000000L, 0);
	/* Every timer signal is pending (all blocked) before ready: the
	 * pending sets the runner compares stay put. */
	zdtm_sleep_ms(50);

	zdtm_ready();
	zdtm_wait();

	if (zdtm_sabotage == 1)
		syscall(SYS_timer_delete, 4);
	if (zdtm_sabotage == 2)
		k_set(3, 0, 0);
	if (zdtm_sabotage == 3)
		k_set(0, 2000000000000L, 0);
	if (zdtm_sabotage == 4)
		k_set(1, 10000000L, 10000000L);
	if (zdtm_sabotage == 5)
		k_set(6, 0, 0);

	zdtm_check(zdtm_read_file("/proc/self/timers", text, sizeof(text)) > 0, "read /proc/self/timers");
	n = !strncmp(text, "ID: ", 4);
	for (char *p = text; (p = strstr(p, "\nID: ")); p++)
		n++;
	zdtm_check(n == 6, "%d timers listed, expected 6:\n%s", n, text);
	zdtm_check(has_timer(0, SIGRTMIN, 0x1111, "signal/pid", me, CLOCK_REALTIME), "timer 0 differs:\n%s", text);
	zdtm_check(has_timer(1, SIGRTMIN + 1, 0x2222, "signal/pid", me, CLOCK_MONOTONIC), "timer 1 differs:\n%s", text);
	zdtm_check(has_timer(3, SIGRTMIN + 2, 0x3333, "signal/tid", worker_tid, CLOCK_BOOTTIME),
		   "timer 3 differs (worker %d):\n%s", worker_tid, text);
	zdtm_check(has_timer(4, SIGALRM, 0x4444, "none/pid", me, CLOCK_MONOTONIC), "timer 4 differs:\n%s", text);
	zdtm_check(has_timer(5, SIGALRM, 0x5555, "none/pid", me, -6), "timer 5 differs:\n%s", text);
	zdtm_check(has_timer(6, SIGRTMIN + 3, 0x6666, "signal/pid", me, CLOCK_MONOTONIC), "timer 6 differs:\n%s", text);

	/* The one-shot values count down with their clocks: however long the
	 * checkpoints and moves took (minutes on a loaded machine), what is
	 * left is at least what was set less the time since. */
	gettime(0, &v, &iv);
	t2 = now_ns(CLOCK_REALTIME);
	zdtm_check(iv == 0 && counts_down(v, 1000000000000LL, armed[0], t2),
		   "timer 0: value %lld interval %lld (%lld ns since it was set)", v, iv, t2 - armed[0]);
	gettime(1, &v, &iv);
	zdtm_check(iv == 10000000 && v > 0 && v <= 10000000, "timer 1: value %lld interval %lld", v, iv);
	gettime(3, &v, &iv);
	zdtm_check(iv == 15000000 && v > 0 && v <= 15000000, "timer 3: value %lld interval %lld", v, iv);
	gettime(4, &v, &iv);
	t2 = now_ns(CLOCK_MONOTONIC);
	zdtm_check(iv == 7000000000LL && counts_down(v, 500000000000LL, armed[1], t2),
		   "timer 4: value %lld interval %lld (%lld ns since it was set)", v, iv, t2 - armed[1]);
	gettime(5, &v, &iv);
	zdtm_check(iv == 0 && v > 90000000000LL && v <= 100000000000LL, "timer 5: value %lld interval %lld", v, iv);
	gettime(6, &v, &iv);
	zdtm_check(iv == 0 && v == 0, "timer 6: value %lld interval %lld", v, iv);

	/* Timer 1: pending with overruns, then firing again. */
	zdtm_check(!(err = expect_signal(SIGRTMIN + 1, 1, 0x2222, &si, msg, sizeof(msg))), "%s", err);
	over = syscall(SYS_timer_getoverrun, 1);
	zdtm_check(si.si_overrun >= 5 && si.si_overrun == over, "timer 1: overrun %d, timer_getoverrun %d", si.si_overrun,
		   over);
	zdtm_check(!(err = expect_signal(SIGRTMIN + 1, 1, 0x2222, &si, msg, sizeof(msg))), "%s (again)", err);
	/* Timer 6: one expiry, pending, delivered once. */
	zdtm_check(!(err = expect_signal(SIGRTMIN + 3, 6, 0x6666, &si, msg, sizeof(msg))), "%s", err);
	zdtm_check(si.si_overrun == 0, "timer 6: overrun %d", si.si_overrun);
	{
		struct timespec ts = { 0, 50000000 };
		sigset_t six;
		sigemptyset(&six);
		sigaddset(&six, SIGRTMIN + 3);
		zdtm_check(sigtimedwait(&six, &si, &ts) < 0, "timer 6 fired twice");
	}
	/* Timer 3: the worker takes two of its signals. */
	go = 1;
	deadline = zdtm_now_ms() + 20000;
	while (!worker_done) {
		zdtm_check(zdtm_now_ms() < deadline, "the worker did not finish within 20 s");
		zdtm_sleep_ms(5);
	}
	zdtm_check(!worker_err[0], "worker: %s", worker_err);
	zdtm_pass();
}
