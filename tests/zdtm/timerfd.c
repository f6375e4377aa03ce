/*
 * timerfd: timers on several clocks.
 *
 * State: a relative one-shot CLOCK_MONOTONIC timer for 3600 s; a periodic
 * CLOCK_MONOTONIC timer firing every 50 ms (non-blocking); an absolute
 * CLOCK_REALTIME timer an hour ahead (TFD_TIMER_ABSTIME); a one-shot
 * CLOCK_BOOTTIME timer that expired once and was not read; a disarmed one.
 * Verified: fdinfo clockid and settime flags of each; the relative timer
 * has no more than 3600 s left and no less than 3600 s minus the time since
 * setup (time spent checkpointed does not count); the periodic one keeps
 * its 50 ms interval and ticks again within 10 s; the absolute one still
 * expires at its instant (1 s tolerance); the expired one reports exactly
 * one expiration and is disarmed; the disarmed one stays so.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/timerfd.h>

#define NS 1000000000LL
#define HOUR 3600LL

static int t_rel, t_per, t_abs, t_exp, t_off;
static long long setup_ms, abs_at;
static char info_before[5][256];

static long long ns_of(struct timespec t)
{
	return t.tv_sec * NS + t.tv_nsec;
}

static long long now_ns(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return ns_of(t);
}

/* The "clockid" and "settime flags" lines of fdinfo. */
static void info_of(int fd, char *out, size_t size)
{
	char path[64], text[1024], clk[32], fl[32];

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (zdtm_read_file(path, text, sizeof(text)) < 0 || !zdtm_field(text, "clockid", clk, sizeof(clk)) ||
	    !zdtm_field(text, "settime flags", fl, sizeof(fl)))
		snprintf(out, size, "?");
	else
		snprintf(out, size, "clockid %s flags %s", clk, fl);
}

static void sabotage(void)
{
	struct itimerspec its = { { 0, 0 }, { 0, 0 } };
	uint64_t n;

	switch (zdtm_sabotage) {
	case 1: /* the expiration was read */
		read(t_exp, &n, 8);
		break;
	case 2: /* the relative timer was disarmed */
		timerfd_settime(t_rel, 0, &its, NULL);
		break;
	case 3: /* the period changed */
		its.it_interval.tv_nsec = its.it_value.tv_nsec = 60000000;
		timerfd_settime(t_per, 0, &its, NULL);
		break;
	case 4: /* the absolute timer became a relative one for 10 s */
		its.it_value.tv_sec = 10;
		timerfd_settime(t_abs, 0, &its, NULL);
		break;
	case 5: /* the disarmed timer was armed */
		its.it_value.tv_sec = 100;
		timerfd_settime(t_off, 0, &its, NULL);
		break;
	}
}

int main(void)
{
	struct itimerspec its;
	struct pollfd pfd;
	int fds[5];
	char now[256];
	uint64_t n;
	long long left, elapsed;

	zdtm_init();
	t_rel = timerfd_create(CLOCK_MONOTONIC, 0);
	t_per = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	t_abs = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
	t_exp = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK);
	t_off = timerfd_create(CLOCK_MONOTONIC, 0);
	if (t_rel < 0 || t_per < 0 || t_abs < 0 || t_exp < 0 || t_off < 0)
		zdtm_die("timerfd_create: %s", strerror(errno));
	setup_ms = zdtm_now_ms();
	its = (struct itimerspec){ { 0, 0 }, { HOUR, 0 } };
	if (timerfd_settime(t_rel, 0, &its, NULL))
		zdtm_die("settime: %s", strerror(errno));
	its = (struct itimerspec){ { 0, 50000000 }, { 0, 50000000 } };
	if (timerfd_settime(t_per, 0, &its, NULL))
		zdtm_die("settime: %s", strerror(errno));
	abs_at = now_ns(CLOCK_REALTIME) + HOUR * NS;
	its = (struct itimerspec){ { 0, 0 }, { abs_at / NS, abs_at % NS } };
	if (timerfd_settime(t_abs, TFD_TIMER_ABSTIME, &its, NULL))
		zdtm_die("settime: %s", strerror(errno));
	its = (struct itimerspec){ { 0, 0 }, { 0, 1000 } };
	if (timerfd_settime(t_exp, 0, &its, NULL))
		zdtm_die("settime: %s", strerror(errno));
	pfd.fd = t_exp;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, 5000) != 1)
		zdtm_die("the short timer did not expire");
	fds[0] = t_rel, fds[1] = t_per, fds[2] = t_abs, fds[3] = t_exp, fds[4] = t_off;
	for (int i = 0; i < 5; i++)
		info_of(fds[i], info_before[i], sizeof(info_before[i]));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < 5; i++) {
		info_of(fds[i], now, sizeof(now));
		zdtm_check(!strcmp(now, info_before[i]), "timer %d: %s, was %s", i, now, info_before[i]);
	}
	zdtm_check(fcntl(t_abs, F_GETFD) == FD_CLOEXEC && fcntl(t_rel, F_GETFD) == 0, "FD_CLOEXEC changed");
	zdtm_check(fcntl(t_per, F_GETFL) & O_NONBLOCK, "the periodic timer lost O_NONBLOCK");

	elapsed = zdtm_now_ms() - setup_ms;
	timerfd_gettime(t_rel, &its);
	left = ns_of(its.it_value);
	zdtm_check(left <= HOUR * NS && left >= HOUR * NS - (elapsed + 1000) * 1000000LL,
		   "relative timer has %lld ms left, %lld ms after it was set for an hour", left / 1000000, elapsed);
	zdtm_check(ns_of(its.it_interval) == 0, "relative timer became periodic");

	timerfd_gettime(t_per, &its);
	zdtm_check(ns_of(its.it_interval) == 50000000, "period %lld ns, expected 50 ms", ns_of(its.it_interval));
	while (read(t_per, &n, 8) == 8)
		;
	pfd.fd = t_per;
	pfd.events = POLLIN;
	zdtm_check(poll(&pfd, 1, 10000) == 1, "the periodic timer did not tick within 10 s");
	zdtm_check(read(t_per, &n, 8) == 8 && n >= 1, "periodic read: %s", strerror(errno));

	timerfd_gettime(t_abs, &its);
	left = ns_of(its.it_value);
	zdtm_check(llabs(now_ns(CLOCK_REALTIME) + left - abs_at) < NS, "absolute timer expires %lld ms off its instant",
		   (now_ns(CLOCK_REALTIME) + left - abs_at) / 1000000);

	zdtm_check(read(t_exp, &n, 8) == 8, "expired timer: %s", strerror(errno));
	zdtm_check(n == 1, "expired timer reports %llu expirations, expected 1", (unsigned long long)n);
	zdtm_check(read(t_exp, &n, 8) < 0 && errno == EAGAIN, "expired timer fired again");
	timerfd_gettime(t_exp, &its);
	zdtm_check(ns_of(its.it_value) == 0, "expired timer is armed again");

	timerfd_gettime(t_off, &its);
	zdtm_check(ns_of(its.it_value) == 0 && ns_of(its.it_interval) == 0, "disarmed timer is armed");
	zdtm_pass();
}
