/*
 * threads: 100 threads.
 *
 * State: 100 threads (256 KiB stacks), each with a name (pthread_setname_np),
 * its id in a __thread variable, its own signal mask (odd threads block
 * SIGUSR2) and glibc's robust futex list; they wait on one condition variable
 * for the main thread's ticks (every 10 ms) and on each tick increment their
 * own counter and a shared one under the mutex. Between ticks every thread
 * sleeps in the kernel (futex wait), which is where a checkpoint finds it.
 * Verified: the same thread ids exist and nothing else; names, TLS ids,
 * pthread_self, masks and robust list heads unchanged (each thread checks
 * itself on every tick); the shared counter equals the sum of the own ones;
 * after SIGTERM every thread still makes progress (3 more ticks each).
 */
#include "zdtm.h"

#include <dirent.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define N 100

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static uint64_t gen, shared_count, mine[N];
static int quit, started;
static pid_t tids[N];
static pthread_t threads[N], selfs[N];
static void *robust_heads[N];
static int *tls_ptrs[N];
static char errors[N][160];
static int unblock_usr2[N]; /* sabotage */
static __thread int my_id = -1;

static void *robust_head(void)
{
	void *head = NULL;
	size_t len = 0;

	if (syscall(SYS_get_robust_list, 0, &head, &len))
		return NULL;
	return head;
}

/* Called with the mutex held: records the first problem of thread i. */
static void check_self(int i)
{
	sigset_t cur;
	int blocked;

	if (errors[i][0])
		return;
	if (my_id != i)
		snprintf(errors[i], sizeof(errors[i]), "thread %d: TLS id is %d", i, my_id);
	else if (syscall(SYS_gettid) != tids[i])
		snprintf(errors[i], sizeof(errors[i]), "thread %d: tid %ld, was %d", i,
			 (long)syscall(SYS_gettid), tids[i]);
	else if (!pthread_equal(pthread_self(), selfs[i]))
		snprintf(errors[i], sizeof(errors[i]), "thread %d: pthread_self changed", i);
	else if (robust_head() != robust_heads[i])
		snprintf(errors[i], sizeof(errors[i]), "thread %d: robust list head %p, was %p", i,
			 robust_head(), robust_heads[i]);
	if (errors[i][0])
		return;
	if (unblock_usr2[i]) {
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, SIGUSR2);
		pthread_sigmask(SIG_UNBLOCK, &s, NULL);
	}
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	blocked = sigismember(&cur, SIGUSR2);
	if (blocked != (i % 2))
		snprintf(errors[i], sizeof(errors[i]), "thread %d: SIGUSR2 %sblocked", i,
			 blocked ? "" : "not ");
	else if (sigismember(&cur, SIGUSR1) || sigismember(&cur, SIGTERM))
		snprintf(errors[i], sizeof(errors[i]), "thread %d: signal mask changed", i);
}

static void *worker(void *arg)
{
	int i = (int)(long)arg;
	uint64_t last = 0;
	char name[16];

	my_id = i;
	tls_ptrs[i] = &my_id;
	snprintf(name, sizeof(name), "zw-%03d", i);
	pthread_setname_np(pthread_self(), name);
	if (i % 2) {
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, SIGUSR2);
		pthread_sigmask(SIG_BLOCK, &s, NULL);
	}
	pthread_mutex_lock(&mu);
	tids[i] = syscall(SYS_gettid);
	selfs[i] = pthread_self();
	robust_heads[i] = robust_head();
	started++;
	pthread_cond_broadcast(&cv);
	for (;;) {
		while (gen == last && !quit)
			pthread_cond_wait(&cv, &mu);
		if (quit)
			break;
		last = gen;
		shared_count++;
		mine[i]++;
		check_self(i);
	}
	pthread_mutex_unlock(&mu);
	return NULL;
}

static void tick(void)
{
	pthread_mutex_lock(&mu);
	gen++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

/* Called with the mutex held. */
static void check_sum(const char *when)
{
	uint64_t sum = 0;

	for (int i = 0; i < N; i++)
		sum += mine[i];
	zdtm_check(sum == shared_count, "%s: shared counter %llu, sum of own counters %llu", when,
		   (unsigned long long)shared_count, (unsigned long long)sum);
	for (int i = 0; i < N; i++)
		zdtm_check(!errors[i][0], "%s", errors[i]);
}

static void check_tasks(void)
{
	char path[128], comm[64], expect[16];
	pid_t main_tid = getpid();
	int count = 0;
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	zdtm_check(d, "opendir /proc/self/task: %s", strerror(errno));
	while ((e = readdir(d))) {
		pid_t t;
		int found = 0;
		if (e->d_name[0] == '.')
			continue;
		t = atoi(e->d_name);
		count++;
		if (t == main_tid)
			continue;
		for (int i = 0; i < N; i++)
			if (tids[i] == t)
				found = 1;
		zdtm_check(found, "unknown thread %d", t);
	}
	closedir(d);
	zdtm_check(count == N + 1, "%d threads, expected %d", count, N + 1);
	for (int i = 0; i < N; i++) {
		snprintf(path, sizeof(path), "/proc/self/task/%d/comm", tids[i]);
		zdtm_check(zdtm_read_file(path, comm, sizeof(comm)) > 0, "thread %d (tid %d) is gone", i,
			   tids[i]);
		snprintf(expect, sizeof(expect), "zw-%03d\n", i);
		zdtm_check(!strcmp(comm, expect), "thread %d is named %.20s", i, comm);
	}
	snprintf(path, sizeof(path), "/proc/self/task/%d/comm", main_tid);
	zdtm_check(zdtm_read_file(path, comm, sizeof(comm)) > 0 && !strcmp(comm, "thr-main\n"),
		   "main thread is named %.20s", comm);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* a thread lost its name */
		pthread_setname_np(threads[5], "oops");
		break;
	case 2: /* a thread's TLS changed */
		*tls_ptrs[7] = 1234;
		break;
	case 3: /* the shared counter is off */
		pthread_mutex_lock(&mu);
		shared_count++;
		pthread_mutex_unlock(&mu);
		break;
	case 4: /* a thread's signal mask changed */
		unblock_usr2[3] = 1;
		break;
	case 5: /* a thread no longer wakes up */
		pthread_cancel(threads[9]);
		pthread_join(threads[9], NULL);
		break;
	}
}

int main(void)
{
	pthread_attr_t attr;
	uint64_t snap[N];
	long long deadline;

	zdtm_init();
	prctl(PR_SET_NAME, "thr-main");
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	for (long i = 0; i < N; i++)
		if (pthread_create(&threads[i], &attr, worker, (void *)i))
			zdtm_die("pthread_create %ld", i);
	pthread_mutex_lock(&mu);
	while (started < N)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	tick();

	zdtm_ready();
	while (!zdtm_stop) {
		zdtm_sleep_ms(10);
		tick();
	}
	sabotage();
	zdtm_sleep_ms(20);
	check_tasks();
	pthread_mutex_lock(&mu);
	check_sum("at SIGTERM");
	memcpy(snap, mine, sizeof(snap));
	pthread_mutex_unlock(&mu);

	deadline = zdtm_now_ms() + 10000;
	for (int i = 0; i < N; i++) {
		for (;;) {
			uint64_t v;
			tick();
			pthread_mutex_lock(&mu);
			v = mine[i];
			pthread_mutex_unlock(&mu);
			if (v >= snap[i] + 3)
				break;
			zdtm_check(zdtm_now_ms() < deadline,
				   "thread %d (tid %d) stopped counting at %llu (no progress for 10 s)", i,
				   tids[i], (unsigned long long)v);
			zdtm_sleep_ms(10);
		}
	}
	pthread_mutex_lock(&mu);
	check_sum("after progress");
	quit = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	for (int i = 0; i < N; i++)
		pthread_join(threads[i], NULL);
	check_sum("at exit");
	zdtm_pass();
}
