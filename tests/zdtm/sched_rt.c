/*
 * sched_rt: the real-time scheduling policies of threads and processes.
 *
 * State: the main thread SCHED_OTHER; threads with SCHED_FIFO priority
 * 10, SCHED_RR priority 20 (nice 4 kept aside for a return to a fair
 * policy), SCHED_FIFO priority 1 with SCHED_RESET_ON_FORK; a child process
 * in SCHED_RR priority 7, nice -2 kept aside. Every one sleeps in
 * nanosleep. Needs a real-time CPU budget in its cgroup (the root
 * cgroup's, or cpu.rt_runtime_us): a partition has none.
 * Verified: sched_getattr of every thread (policy, flags, priority) and
 * the nice values /proc shows, also of the child; the RR thread has a
 * round-robin time slice; a thread the FIFO reset-on-fork thread creates
 * now runs SCHED_OTHER.
 */
#include "zdtm.h"
#include "sched.h"

#include <pthread.h>

#define NTHREADS 3
static const struct want wants[NTHREADS + 1] = {
	{ "main", SCHED_OTHER, 0, 0, 0, 0 },
	{ "fifo10", SCHED_FIFO, 0, 0, 10, 0 },
	{ "rr20", SCHED_RR, 0, 0, 20, 4 },
	{ "fifo1rof", SCHED_FIFO, SCHED_FLAG_RESET_ON_FORK, 0, 1, 0 },
};
static const struct want child_want = { "child", SCHED_RR, 0, 0, 7, -2 };

static pid_t tids[NTHREADS + 1];
static volatile int started;
static pid_t child;

static void *probe(void *arg)
{
	struct attr *a = arg;
	getattr(0, a);
	return NULL;
}

/* Asked by the main thread, the reset-on-fork thread makes a thread. */
static volatile int probe_asked, probe_done;
static struct attr probe_attr;

static void *thread_main(void *arg)
{
	long i = (long)arg;

	tids[i] = syscall(SYS_gettid);
	if (setattr(tids[i], &wants[i]))
		zdtm_die("sched_setattr %s: %s", wants[i].name, strerror(errno));
	__atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		if (i == 3 && probe_asked && !probe_done) {
			pthread_t t;
			if (pthread_create(&t, NULL, probe, &probe_attr) == 0 && pthread_join(t, NULL) == 0)
				probe_done = 1;
			else
				probe_done = -1;
		}
		zdtm_sleep_ms(5);
	}
	return NULL;
}

static void sabotage(void)
{
	static const struct want rr0 = { "rr20", SCHED_RR, 0, 0, 20, 0 };
	static const struct want other = { "fifo10", SCHED_OTHER, 0, 0, 0, 0 };
	static const struct want norof = { "fifo1rof", SCHED_FIFO, 0, 0, 1, 0 };
	static const struct want fifo5 = { "child", SCHED_RR, 0, 0, 5, -2 };

	switch (zdtm_sabotage) {
	case 1: /* the nice value kept aside by the RR thread reset */
		setattr(tids[2], &rr0);
		break;
	case 2: /* a real-time thread back to SCHED_OTHER */
		setattr(tids[1], &other);
		break;
	case 3: /* reset-on-fork lost */
		setattr(tids[3], &norof);
		break;
	case 4: /* the child's priority changed */
		setattr(child, &fifo5);
		break;
	}
}

int main(void)
{
	char msg[400];
	const char *err;
	pthread_t t;
	struct timespec ts;
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
	zdtm_check(sched_rr_get_interval(tids[2], &ts) == 0 && (ts.tv_sec || ts.tv_nsec), "rr20: no round-robin time slice");
	/* A thread the reset-on-fork FIFO thread creates now runs SCHED_OTHER. */
	probe_asked = 1;
	{
		long long end = zdtm_now_ms() + 10000;
		while (!probe_done && zdtm_now_ms() < end)
			zdtm_sleep_ms(5);
	}
	zdtm_check(probe_done == 1, "the FIFO thread could not create a thread");
	zdtm_check(probe_attr.policy == SCHED_OTHER && probe_attr.flags == 0 && probe_attr.priority == 0,
		   "a thread of the reset-on-fork FIFO thread got policy %u flags %#llx priority %u", probe_attr.policy,
		   (unsigned long long)probe_attr.flags, probe_attr.priority);
	zdtm_pass();
}
