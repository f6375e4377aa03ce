/*
 * sched_policy: the fair scheduling policies, nice values and flags of
 * every thread (the real-time ones are sched_rt's).
 *
 * State: the main thread SCHED_OTHER nice 3 with SCHED_RESET_ON_FORK;
 * threads with SCHED_BATCH nice 5, SCHED_IDLE nice 2, SCHED_OTHER nice
 * 11; a child process in SCHED_BATCH, nice -2. Every one sleeps in
 * nanosleep.
 * Verified: sched_getattr of every thread (policy, flags, nice) and the
 * nice values /proc shows, also of the child; a thread created now by the
 * main thread gets SCHED_OTHER without the flag and keeps nice 3 (reset on
 * fork resets a negative nice only).
 */
#include "zdtm.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif
#define SCHED_FLAG_RESET_ON_FORK 0x01

struct attr {
	uint32_t size;
	uint32_t policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
	uint32_t util_min, util_max;
};

struct want {
	const char *name;
	uint32_t policy;
	uint64_t flags;
	int32_t nice; /* as sched_getattr shows it: 0 for real-time policies */
	uint32_t priority;
	int32_t stat_nice; /* as /proc/PID/task/TID/stat shows it: kept aside under a real-time policy */
};

#define NTHREADS 3
static const struct want wants[NTHREADS + 1] = {
	{ "main", SCHED_OTHER, SCHED_FLAG_RESET_ON_FORK, 3, 0, 3 },
	{ "batch", SCHED_BATCH, 0, 5, 0, 5 },
	{ "idle", SCHED_IDLE, 0, 2, 0, 2 },
	{ "other11", SCHED_OTHER, 0, 11, 0, 11 },
};
static const struct want child_want = { "child", SCHED_BATCH, 0, -2, 0, -2 };

static pid_t tids[NTHREADS + 1];
static volatile int started;
static pid_t child;

static int getattr(pid_t tid, struct attr *a)
{
	memset(a, 0, sizeof(*a));
	return syscall(SYS_sched_getattr, tid, a, sizeof(*a), 0);
}

static int setattr(pid_t tid, const struct want *w)
{
	struct attr a = { .size = 48, .policy = w->policy, .flags = w->flags, .nice = w->stat_nice, .priority = w->priority };
	/* The nice value of an RT thread is kept for a later return to a fair policy. */
	if (setpriority(PRIO_PROCESS, tid, w->stat_nice))
		return -1;
	return syscall(SYS_sched_setattr, tid, &a, 0);
}

/* Why thread `tid` does not have `w`, or NULL. */
static const char *differs(pid_t tid, const struct want *w, char *msg, size_t size)
{
	struct attr a;
	char path[64], buf[1024];
	const char *p;
	long nice = 99;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	if (tid == child)
		snprintf(path, sizeof(path), "/proc/%d/stat", tid);
	if (zdtm_read_file(path, buf, sizeof(buf)) > 0 && (p = strrchr(buf, ')'))) {
		/* Field 19 (nice) is the 17th after the command. */
		for (int f = 0; f < 17 && p; f++)
			p = strchr(p + 1, ' ');
		if (p)
			nice = strtol(p + 1, NULL, 10);
	}
	if (nice != w->stat_nice)
		return snprintf(msg, size, "%s (tid %d): nice %ld in stat, expected %d", w->name, tid, nice, w->stat_nice), msg;
	if (getattr(tid, &a))
		return snprintf(msg, size, "sched_getattr(%d): %s", tid, strerror(errno)), msg;
	if (a.policy != w->policy || a.flags != w->flags || a.priority != w->priority || a.nice != w->nice)
		return snprintf(msg, size, "%s (tid %d): policy %u flags %#llx nice %d priority %u; expected policy %u flags %#llx nice %d priority %u",
				w->name, tid, a.policy, (unsigned long long)a.flags, a.nice, a.priority, w->policy,
				(unsigned long long)w->flags, w->nice, w->priority),
		       msg;
	return NULL;
}

static void *thread_main(void *arg)
{
	long i = (long)arg;

	tids[i] = syscall(SYS_gettid);
	if (setattr(tids[i], &wants[i]))
		zdtm_die("sched_setattr %s: %s", wants[i].name, strerror(errno));
	__atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
	for (;;)
		zdtm_sleep_ms(50);
	return NULL;
}

static void *probe(void *arg)
{
	struct attr *a = arg;
	getattr(0, a);
	return NULL;
}

static void sabotage(void)
{
	static const struct want batch0 = { "batch", SCHED_BATCH, 0, 0, 0, 0 };
	static const struct want other = { "idle", SCHED_OTHER, 0, 2, 0, 2 };
	static const struct want norof = { "main", SCHED_OTHER, 0, 3, 0, 3 };

	switch (zdtm_sabotage) {
	case 1: /* the nice value of the batch thread reset */
		setattr(tids[1], &batch0);
		break;
	case 2: /* the idle thread back to SCHED_OTHER */
		setattr(tids[2], &other);
		break;
	case 3: /* reset-on-fork lost */
		setattr(tids[0], &norof);
		break;
	}
}

int main(void)
{
	char msg[400];
	const char *err;
	struct attr a;
	pthread_t t;
	int pipefd[2];

	zdtm_init();
	if (pipe(pipefd))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		if (setattr(0, &child_want))
			_exit(2);
		close(pipefd[1]);
		for (;;)
			zdtm_sleep_ms(50);
	}
	zdtm_kid(child);
	close(pipefd[1]);
	tids[0] = getpid();
	if (setattr(0, &wants[0]))
		zdtm_die("sched_setattr main: %s", strerror(errno));
	for (long i = 1; i <= NTHREADS; i++)
		if (pthread_create(&t, NULL, thread_main, (void *)i))
			zdtm_die("pthread_create");
	while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < NTHREADS)
		zdtm_sleep_ms(1);
	/* The child has set its attributes once its end of the pipe is closed. */
	{
		char c;
		while (read(pipefd[0], &c, 1) < 0 && errno == EINTR)
			;
	}
	for (int i = 0; i <= NTHREADS; i++)
		if ((err = differs(tids[i], &wants[i], msg, sizeof(msg))))
			zdtm_die("%s", err);
	if ((err = differs(child, &child_want, msg, sizeof(msg))))
		zdtm_die("%s", err);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i <= NTHREADS; i++)
		if ((err = differs(tids[i], &wants[i], msg, sizeof(msg))))
			zdtm_fail("%s", err);
	if ((err = differs(child, &child_want, msg, sizeof(msg))))
		zdtm_fail("%s", err);
	/* A thread created now: the main thread resets on fork (nice stays 3). */
	zdtm_check(pthread_create(&t, NULL, probe, &a) == 0 && pthread_join(t, NULL) == 0, "pthread_create");
	zdtm_check(a.policy == SCHED_OTHER && a.flags == 0 && a.nice == 3, "a new thread got policy %u flags %#llx nice %d",
		   a.policy, (unsigned long long)a.flags, a.nice);
	zdtm_pass();
}
