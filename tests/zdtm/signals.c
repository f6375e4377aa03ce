/*
 * signals: signal dispositions, mask, pending signals, sigaltstack.
 *
 * State: handlers with SA_SIGINFO|SA_RESTART, SA_ONSTACK|SA_NODEFER|
 * SA_RESETHAND and their sa_masks; SIGPIPE ignored; a blocked mask; pending
 * while blocked: SIGUSR1 (process-wide, kill), SIGUSR2 (thread-private,
 * tgkill) and SIGRTMIN+3 queued twice by sigqueue with values 1111 and 2222;
 * a sigaltstack.
 * Verified: every sigaction (handler, flags, restorer, mask) unchanged; the
 * mask; the private and shared pending sets (/proc/self/status SigPnd and
 * ShdPnd); sigaltstack; after unblocking, each signal is delivered once with
 * the right si_code, si_pid, si_uid and, for the queued ones, si_value in
 * queue order; the handlers run with their sa_mask, SIGUSR2 on the
 * alternate stack; SA_RESETHAND reset SIGUSR2 afterwards.
 */
#include "zdtm.h"

#include <sys/syscall.h>

#define NSIG_K 64
#define ALT_SIZE (64 * 1024)

static char altstack[ALT_SIZE] __attribute__((aligned(16)));
/* The kernel's struct sigaction: queried raw to see signals 32 and 33 too. */
struct ksigaction {
	void *handler;
	unsigned long flags;
	void *restorer;
	uint64_t mask;
};
static struct ksigaction saved[NSIG_K + 1];

static int query(int sig, struct ksigaction *out)
{
	memset(out, 0, sizeof(*out));
	return syscall(SYS_rt_sigaction, sig, NULL, out, 8);
}

static stack_t saved_ss;
static char status_before[8192], status_now[8192];

struct event {
	int signo, code, pid, uid, value, on_alt, mask_ok;
};
static struct event events[16];
static volatile int nevents;

static int blocked_now(int sig)
{
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	return sigismember(&cur, sig);
}

static void record(int signo, siginfo_t *si, int mask_ok)
{
	char local;
	struct event *e;

	if (nevents >= 16)
		return;
	e = &events[nevents++];
	e->signo = signo;
	if (si) {
		e->code = si->si_code;
		e->pid = si->si_pid;
		e->uid = si->si_uid;
		e->value = si->si_value.sival_int;
	}
	e->on_alt = &local >= altstack && &local < altstack + ALT_SIZE;
	e->mask_ok = mask_ok;
}

static void h_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	record(sig, si, blocked_now(SIGUSR2) && blocked_now(SIGHUP) && blocked_now(SIGUSR1));
}

static void h_usr2(int sig)
{
	/* SA_NODEFER: SIGUSR2 itself is not blocked, SIGINT is. */
	record(sig, NULL, blocked_now(SIGINT) && !blocked_now(SIGUSR2));
}

static void h_rt(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	record(sig, si, blocked_now(SIGRTMIN + 4) && blocked_now(SIGRTMIN + 3));
}

static void h_hup(int sig)
{
	record(sig, NULL, 1);
}

static void set(int sig, void *handler, int flags, int mask1, int mask2)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (mask1)
		sigaddset(&sa.sa_mask, mask1);
	if (mask2)
		sigaddset(&sa.sa_mask, mask2);
	if (sigaction(sig, &sa, NULL))
		zdtm_die("sigaction %d: %s", sig, strerror(errno));
}

static void blocked_set(sigset_t *s)
{
	sigemptyset(s);
	sigaddset(s, SIGUSR1);
	sigaddset(s, SIGUSR2);
	sigaddset(s, SIGRTMIN + 3);
	sigaddset(s, SIGWINCH);
	sigaddset(s, SIGRTMAX);
}

/* The kernel's hex mask of a set of signals, as /proc/self/status shows it. */
static void hexmask(char *out, size_t size, const int *sigs, int n)
{
	uint64_t m = 0;
	for (int i = 0; i < n; i++)
		m |= 1ULL << (sigs[i] - 1);
	snprintf(out, size, "%016llx", (unsigned long long)m);
}

static void check_status_field(const char *key, const char *expect)
{
	char a[64], b[64];

	zdtm_check(zdtm_field(status_now, key, a, sizeof(a)), "no %s in /proc/self/status", key);
	zdtm_check(zdtm_field(status_before, key, b, sizeof(b)), "no %s at setup", key);
	zdtm_check(!strcmp(a, b), "%s is %s, was %s", key, a, b);
	if (expect)
		zdtm_check(!strcmp(a, expect), "%s is %s, expected %s", key, a, expect);
}

static void sabotage(void)
{
	sigset_t s;
	struct timespec zero = { 0, 0 };
	stack_t ss;

	switch (zdtm_sabotage) {
	case 1: /* a pending signal was lost */
		sigemptyset(&s);
		sigaddset(&s, SIGUSR1);
		sigtimedwait(&s, NULL, &zero);
		break;
	case 2: /* a handler lost SA_RESTART */
		set(SIGUSR1, h_usr1, SA_SIGINFO, SIGUSR2, SIGHUP);
		break;
	case 3: /* the mask changed */
		sigemptyset(&s);
		sigaddset(&s, SIGWINCH);
		sigprocmask(SIG_UNBLOCK, &s, NULL);
		break;
	case 4: /* sigaltstack was not restored */
		memset(&ss, 0, sizeof(ss));
		ss.ss_flags = SS_DISABLE;
		sigaltstack(&ss, NULL);
		break;
	case 5: /* one queued real-time signal was lost */
		sigemptyset(&s);
		sigaddset(&s, SIGRTMIN + 3);
		sigtimedwait(&s, NULL, &zero);
		break;
	case 6: /* a thread-private pending signal became process-wide */
		sigemptyset(&s);
		sigaddset(&s, SIGUSR2);
		sigtimedwait(&s, NULL, &zero);
		kill(getpid(), SIGUSR2);
		break;
	}
}

int main(void)
{
	stack_t ss;
	sigset_t s, cur;
	union sigval v;
	char expect[32];
	int n_usr1 = 0, n_usr2 = 0, n_rt = 0, rt_values[2] = { 0, 0 };

	zdtm_init();
	memset(&ss, 0, sizeof(ss));
	ss.ss_sp = altstack;
	ss.ss_size = ALT_SIZE;
	if (sigaltstack(&ss, NULL))
		zdtm_die("sigaltstack: %s", strerror(errno));
	set(SIGUSR1, h_usr1, SA_SIGINFO | SA_RESTART, SIGUSR2, SIGHUP);
	set(SIGUSR2, h_usr2, SA_ONSTACK | SA_NODEFER | SA_RESETHAND, SIGINT, 0);
	set(SIGRTMIN + 3, h_rt, SA_SIGINFO, SIGRTMIN + 4, 0);
	set(SIGHUP, h_hup, SA_RESTART, 0, 0);
	set(SIGPIPE, SIG_IGN, 0, 0, 0);
	blocked_set(&s);
	if (sigprocmask(SIG_SETMASK, &s, NULL))
		zdtm_die("sigprocmask: %s", strerror(errno));
	if (kill(getpid(), SIGUSR1) || syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGUSR2))
		zdtm_die("kill: %s", strerror(errno));
	v.sival_int = 1111;
	if (sigqueue(getpid(), SIGRTMIN + 3, v))
		zdtm_die("sigqueue: %s", strerror(errno));
	v.sival_int = 2222;
	if (sigqueue(getpid(), SIGRTMIN + 3, v))
		zdtm_die("sigqueue: %s", strerror(errno));

	for (int sig = 1; sig <= NSIG_K; sig++)
		if (sig != SIGKILL && sig != SIGSTOP && query(sig, &saved[sig]))
			zdtm_die("sigaction query %d: %s", sig, strerror(errno));
	sigaltstack(NULL, &saved_ss);
	if (zdtm_read_file("/proc/self/status", status_before, sizeof(status_before)) <= 0)
		zdtm_die("read status");

	zdtm_ready();
	zdtm_wait();
	sabotage();

	/* Dispositions. */
	for (int sig = 1; sig <= NSIG_K; sig++) {
		struct ksigaction now;
		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		zdtm_check(query(sig, &now) == 0, "rt_sigaction %d: %s", sig, strerror(errno));
		zdtm_check(now.handler == saved[sig].handler, "signal %d handler %p, was %p", sig,
			   now.handler, saved[sig].handler);
		zdtm_check(now.flags == saved[sig].flags, "signal %d flags %#lx, were %#lx", sig,
			   now.flags, saved[sig].flags);
		zdtm_check(now.restorer == saved[sig].restorer, "signal %d restorer %p, was %p", sig,
			   now.restorer, saved[sig].restorer);
		zdtm_check(now.mask == saved[sig].mask, "signal %d sa_mask %#llx, was %#llx", sig,
			   (unsigned long long)now.mask, (unsigned long long)saved[sig].mask);
	}
	zdtm_check(saved[SIGPIPE].handler == (void *)SIG_IGN, "SIGPIPE not ignored at setup");
	zdtm_check(saved[SIGUSR1].flags & SA_RESTART, "SIGUSR1 without SA_RESTART at setup");
	zdtm_check(saved[SIGUSR2].mask == 1ULL << (SIGINT - 1), "SIGUSR2 sa_mask %#llx at setup",
		   (unsigned long long)saved[SIGUSR2].mask);

	/* Mask, pending sets, altstack. */
	blocked_set(&s);
	sigprocmask(SIG_BLOCK, NULL, &cur);
	for (int m = 1; m <= NSIG_K; m++)
		zdtm_check(sigismember(&cur, m) == sigismember(&s, m), "signal %d is %sblocked", m,
			   sigismember(&cur, m) ? "" : "not ");
	zdtm_check(zdtm_read_file("/proc/self/status", status_now, sizeof(status_now)) > 0,
		   "read /proc/self/status");
	hexmask(expect, sizeof(expect), (int[]){ SIGUSR2 }, 1);
	check_status_field("SigPnd", expect);
	hexmask(expect, sizeof(expect), (int[]){ SIGUSR1, SIGRTMIN + 3 }, 2);
	check_status_field("ShdPnd", expect);
	check_status_field("SigBlk", NULL);
	check_status_field("SigIgn", NULL);
	check_status_field("SigCgt", NULL);
	sigpending(&cur);
	for (int m = 1; m <= NSIG_K; m++)
		zdtm_check(sigismember(&cur, m) ==
				   (m == SIGUSR1 || m == SIGUSR2 || m == SIGRTMIN + 3),
			   "signal %d is %spending", m, sigismember(&cur, m) ? "" : "not ");
	sigaltstack(NULL, &ss);
	zdtm_check(ss.ss_sp == saved_ss.ss_sp && ss.ss_size == saved_ss.ss_size &&
			   ss.ss_flags == saved_ss.ss_flags && ss.ss_sp == altstack,
		   "sigaltstack is %p+%zu flags %d, was %p+%zu flags %d", ss.ss_sp, ss.ss_size,
		   ss.ss_flags, saved_ss.ss_sp, saved_ss.ss_size, saved_ss.ss_flags);

	/* Delivery. */
	sigemptyset(&s);
	sigprocmask(SIG_SETMASK, &s, NULL);
	for (int i = 0; i < nevents; i++) {
		struct event *e = &events[i];
		zdtm_check(e->mask_ok, "handler of signal %d ran with a wrong mask", e->signo);
		if (e->signo == SIGUSR1) {
			n_usr1++;
			zdtm_check(e->code == SI_USER && e->pid == getpid() && e->uid == (int)getuid(),
				   "SIGUSR1 siginfo code %d pid %d uid %d", e->code, e->pid, e->uid);
		} else if (e->signo == SIGUSR2) {
			n_usr2++;
			zdtm_check(e->on_alt, "SIGUSR2 handler did not run on the alternate stack");
		} else if (e->signo == SIGRTMIN + 3) {
			zdtm_check(e->code == SI_QUEUE && e->pid == getpid() && e->uid == (int)getuid(),
				   "SIGRTMIN+3 siginfo code %d pid %d uid %d", e->code, e->pid, e->uid);
			if (n_rt < 2)
				rt_values[n_rt] = e->value;
			n_rt++;
		} else {
			zdtm_fail("unexpected signal %d delivered", e->signo);
		}
	}
	zdtm_check(n_usr1 == 1 && n_usr2 == 1 && n_rt == 2,
		   "delivered SIGUSR1 x%d, SIGUSR2 x%d, SIGRTMIN+3 x%d; expected 1, 1, 2", n_usr1,
		   n_usr2, n_rt);
	zdtm_check(rt_values[0] == 1111 && rt_values[1] == 2222,
		   "SIGRTMIN+3 values %d, %d; expected 1111, 2222", rt_values[0], rt_values[1]);
	{
		struct sigaction now;
		sigaction(SIGUSR2, NULL, &now);
		zdtm_check(now.sa_handler == SIG_DFL, "SA_RESETHAND did not reset SIGUSR2");
	}
	sigpending(&cur);
	for (int m = 1; m <= NSIG_K; m++)
		zdtm_check(!sigismember(&cur, m), "signal %d still pending after delivery", m);
	zdtm_pass();
}
