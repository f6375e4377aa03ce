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
#include "sched.h"

#include <pthread.h>

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
		if ((err = differs(tids[i], 0, &wants[i], msg, sizeof(msg))))
			zdtm_die("%s", err);
	if ((err = differs(child, 1, &child_want, msg, sizeof(msg))))
		zdtm_die("%s", err);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i <= NTHREADS; i++)
		if ((err = differs(tids[i], 0, &wants[i], msg, sizeof(msg))))
			zdtm_fail("%s", err);
	if ((err = differs(child, 1, &child_want, msg, sizeof(msg))))
		zdtm_fail("%s", err);
	/* A thread created now: the main thread resets on fork (nice stays 3). */
	zdtm_check(pthread_create(&t, NULL, probe, &a) == 0 && pthread_join(t, NULL) == 0, "pthread_create");
	zdtm_check(a.policy == SCHED_OTHER && a.flags == 0 && a.nice == 3, "a new thread got policy %u flags %#llx nice %d",
		   a.policy, (unsigned long long)a.flags, a.nice);
	zdtm_pass();
}
