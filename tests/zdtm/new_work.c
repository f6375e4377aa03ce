/*
 * new_work: work begun after the program is resumed.
 *
 * A restore that only brings back what a program held can still leave it
 * unable to do anything new: a thread created after the move whose cached
 * stack read as zero, a fork whose child finds memory changed, pages that
 * come back after the program dropped them. So this program does, before
 * ready, each kind of work once, and again in a round of new work after
 * every restore or move.
 *
 * State before ready:
 *   - threads created and joined, default and small stacks, so glibc holds
 *     their stacks in its cache (their unused parts dropped with
 *     MADV_DONTNEED) for the next threads to reuse;
 *   - a pool of 4 workers waiting for jobs (a queue per worker, one mutex
 *     and condition variable), one batch of jobs done;
 *   - a child forked that exec'd this program and exited with a status
 *     derived from its token, reaped;
 *   - a 256 KiB table and a 32 MiB area with patterns, an area mapped,
 *     grown with mremap and unmapped.
 * A round (on SIGUSR1, and once more on SIGTERM), each step checked:
 *   - 4 threads on default stacks (reusing the cached ones) and 4 on
 *     64 KiB stacks: their initialized and zeroed TLS, a 32 KiB stack
 *     buffer, a digest of their slice of the table, joined;
 *   - 64 jobs through the pool, 16 per worker: each worker's TLS id and
 *     tid, each job's digest;
 *   - fork + exec of this program with a fresh token (its exit status);
 *     fork alone, the child checking the table and the 32 MiB area;
 *   - mmap 8 MiB, fill, mremap to 16 MiB, mprotect the middle read-only
 *     (splitting the area), check, munmap (then gone); a page of the 32
 *     MiB area dropped with MADV_DONTNEED reads zero, and is written again.
 * The runners send SIGUSR1 after each restore or move, having removed the
 * file `round` in the program's dir, and wait for it: "ok" or "FAIL: why".
 * Verified at SIGTERM: every round passed, a last round passes, and the
 * pattern areas are intact.
 *
 * Started with argv[1] = "exec-child" and a token, it is the exec'd child.
 */
#include "zdtm.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define TABLE (256 << 10)
#define KEEP (32 << 20)
#define SLICES 8
#define SLICE (TABLE / SLICES)
#define WORKERS 4
#define JOBS 16 /* per worker and round */
#define TLS_INIT 0x5eed0000c0ffeeULL

static uint64_t *table, *keep;
static uint64_t slice_sum[SLICES];
static char self_exe[4096];
static volatile sig_atomic_t kicks;
static int rounds_done, in_last_round;
static char first_error[700];
static __thread uint64_t tls_init = TLS_INIT;
static __thread uint64_t tls_zero;

static void on_usr1(int sig)
{
	(void)sig;
	kicks++;
}

/* The sum of the words of table slice s (checked against its pattern). */
static uint64_t slice_digest(int s, char *err, size_t errlen)
{
	const uint64_t *p = table + (size_t)s * SLICE / 8;
	uint64_t sum = 0;
	long bad = zdtm_diff(p, SLICE, 100 + (uint64_t)s * SLICE / 8);

	if (bad >= 0 && err)
		snprintf(err, errlen, "table slice %d differs at word %ld", s, bad);
	for (size_t i = 0; i < SLICE / 8; i++)
		sum = sum * 31 + p[i];
	return sum;
}

/* ---------------------------------------------------------- new threads */

struct job_thread {
	int slice;
	uint64_t digest;
	char err[160];
};

static void *one_thread(void *arg)
{
	struct job_thread *j = arg;
	volatile uint64_t stack[4096]; /* 32 KiB of this thread's stack */

	if (tls_init != TLS_INIT || tls_zero != 0) {
		snprintf(j->err, sizeof(j->err), "a new thread's TLS is %#llx/%#llx, expected %#llx/0",
			 (unsigned long long)tls_init, (unsigned long long)tls_zero, TLS_INIT);
		return NULL;
	}
	tls_init = syscall(SYS_gettid);
	tls_zero = ~0ULL;
	for (size_t i = 0; i < 4096; i++)
		stack[i] = zdtm_mix(i + (uint64_t)j->slice);
	for (size_t i = 0; i < 4096; i++)
		if (stack[i] != zdtm_mix(i + (uint64_t)j->slice)) {
			snprintf(j->err, sizeof(j->err), "a new thread's stack word %zu changed", i);
			return NULL;
		}
	j->digest = slice_digest(j->slice, j->err, sizeof(j->err));
	return NULL;
}

/* Creates 4 threads on default stacks and 4 on 64 KiB ones, joins them. */
static void threads_step(char *err, size_t errlen)
{
	struct job_thread jobs[8];
	pthread_t t[8];
	pthread_attr_t small;
	int made = 0;

	memset(jobs, 0, sizeof(jobs));
	pthread_attr_init(&small);
	pthread_attr_setstacksize(&small, 64 << 10);
	for (int i = 0; i < 8; i++) {
		int r;
		jobs[i].slice = i % SLICES;
		r = pthread_create(&t[i], i < 4 ? NULL : &small, one_thread, &jobs[i]);
		if (r) {
			snprintf(err, errlen, "pthread_create %d: %s", i, strerror(r));
			break;
		}
		made++;
	}
	for (int i = 0; i < made; i++)
		pthread_join(t[i], NULL);
	pthread_attr_destroy(&small);
	if (err[0])
		return;
	for (int i = 0; i < 8; i++) {
		if (jobs[i].err[0]) {
			snprintf(err, errlen, "thread %d: %s", i, jobs[i].err);
			return;
		}
		if (jobs[i].digest != slice_sum[jobs[i].slice]) {
			snprintf(err, errlen, "thread %d: digest of slice %d is %#llx, expected %#llx", i,
				 jobs[i].slice, (unsigned long long)jobs[i].digest,
				 (unsigned long long)slice_sum[jobs[i].slice]);
			return;
		}
	}
}

/* ----------------------------------------------------------------- pool */

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static pthread_t workers[WORKERS];
static pid_t worker_tid[WORKERS];
static int pool_started, pool_quit;
static int worker_stop[WORKERS]; /* sabotage */
static struct {
	int queued, done;   /* jobs handed to this worker, and done */
	uint64_t digest[JOBS];
	char err[160];
} pool[WORKERS];
static __thread int worker_id = -1;

static void *worker(void *arg)
{
	int w = (int)(long)arg;

	worker_id = w;
	pthread_mutex_lock(&pool_mu);
	worker_tid[w] = syscall(SYS_gettid);
	pool_started++;
	pthread_cond_broadcast(&pool_cv);
	for (;;) {
		int j;
		while (pool[w].done == pool[w].queued && !pool_quit && !worker_stop[w])
			pthread_cond_wait(&pool_cv, &pool_mu);
		if (pool_quit || worker_stop[w])
			break;
		j = pool[w].done;
		pthread_mutex_unlock(&pool_mu);
		/* The work, outside the lock. */
		if (worker_id != w && !pool[w].err[0])
			snprintf(pool[w].err, sizeof(pool[w].err), "worker %d: TLS id is %d", w, worker_id);
		else if (syscall(SYS_gettid) != worker_tid[w] && !pool[w].err[0])
			snprintf(pool[w].err, sizeof(pool[w].err), "worker %d: tid %ld, was %d", w,
				 (long)syscall(SYS_gettid), worker_tid[w]);
		pool[w].digest[j % JOBS] = slice_digest((w * JOBS + j) % SLICES, NULL, 0);
		pthread_mutex_lock(&pool_mu);
		pool[w].done++;
		pthread_cond_broadcast(&pool_cv);
	}
	pthread_mutex_unlock(&pool_mu);
	return NULL;
}

/* JOBS jobs to every worker; waits up to 10 s for all of them. */
static void pool_step(char *err, size_t errlen)
{
	int base[WORKERS];
	long long deadline = zdtm_now_ms() + 10000;

	pthread_mutex_lock(&pool_mu);
	for (int w = 0; w < WORKERS; w++) {
		base[w] = pool[w].queued;
		pool[w].queued += JOBS;
	}
	pthread_cond_broadcast(&pool_cv);
	for (;;) {
		int all = 1;
		struct timespec ts;
		for (int w = 0; w < WORKERS; w++)
			all &= pool[w].done == pool[w].queued;
		if (all)
			break;
		if (zdtm_now_ms() > deadline) {
			for (int w = 0; w < WORKERS; w++)
				if (pool[w].done != pool[w].queued) {
					snprintf(err, errlen, "pool worker %d (tid %d) did %d of %d jobs in 10 s", w,
						 worker_tid[w], pool[w].done - base[w], JOBS);
					break;
				}
			pthread_mutex_unlock(&pool_mu);
			return;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&pool_cv, &pool_mu, &ts);
	}
	for (int w = 0; w < WORKERS && !err[0]; w++) {
		if (pool[w].err[0]) {
			snprintf(err, errlen, "%s", pool[w].err);
			break;
		}
		for (int j = base[w]; j < base[w] + JOBS; j++) {
			uint64_t want = slice_sum[(w * JOBS + j) % SLICES];
			if (pool[w].digest[j % JOBS] != want) {
				snprintf(err, errlen, "pool worker %d, job %d: digest %#llx, expected %#llx", w, j,
					 (unsigned long long)pool[w].digest[j % JOBS], (unsigned long long)want);
				break;
			}
		}
	}
	pthread_mutex_unlock(&pool_mu);
}

/* ------------------------------------------------------- fork and exec */

static int exec_status(uint64_t token)
{
	return 20 + (int)(zdtm_mix(token) % 200);
}

static void fork_step(uint64_t token, char *err, size_t errlen)
{
	char arg[32];
	pid_t pid;
	int st;

	snprintf(arg, sizeof(arg), "%llu",
		 (unsigned long long)(token + (in_last_round && zdtm_sabotage == 2)));
	pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "fork for exec: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		execl(self_exe, "new_work", "exec-child", arg, (char *)NULL);
		_exit(127);
	}
	zdtm_kid(pid);
	st = zdtm_wait_kid(pid, "exec and exit");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != exec_status(token)) {
		snprintf(err, errlen, "the exec'd child (token %llu) ended with status %#x, expected exit %d",
			 (unsigned long long)token, st, exec_status(token));
		return;
	}

	/* Fork alone: the child sees the parent's memory as it was. */
	if (in_last_round && zdtm_sabotage == 5)
		keep[12345] ^= 1;
	pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		for (int s = 0; s < SLICES; s++)
			if (slice_digest(s, NULL, 0) != slice_sum[s])
				_exit(3);
		_exit(zdtm_diff(keep, KEEP, 7) >= 0 ? 4 : 0);
	}
	zdtm_kid(pid);
	st = zdtm_wait_kid(pid, "check its memory and exit");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		snprintf(err, errlen, "the forked child found %s (status %#x)",
			 WIFEXITED(st) && WEXITSTATUS(st) == 3	 ? "the table changed"
			 : WIFEXITED(st) && WEXITSTATUS(st) == 4 ? "the 32 MiB area changed"
								  : "something wrong",
			 st);
}

/* ---------------------------------------------------------------- memory */

static void mem_step(int round, char *err, size_t errlen)
{
	size_t len = 8 << 20, big = 16 << 20, page = 4096;
	uint64_t *a, *b, *p;
	unsigned char vec;

	a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED) {
		snprintf(err, errlen, "mmap 8 MiB: %s", strerror(errno));
		return;
	}
	zdtm_fill(a, len, 1000 + round);
	b = mremap(a, len, big, MREMAP_MAYMOVE);
	if (b == MAP_FAILED) {
		snprintf(err, errlen, "mremap to 16 MiB: %s", strerror(errno));
		munmap(a, len);
		return;
	}
	if (mprotect((char *)b + (6 << 20), 4 << 20, PROT_READ)) {
		snprintf(err, errlen, "mprotect the middle: %s", strerror(errno));
		munmap(b, big);
		return;
	}
	if (zdtm_diff(b, len, 1000 + round) >= 0)
		snprintf(err, errlen, "an area grown with mremap lost its data");
	for (size_t i = len / 8; i < big / 8 && !err[0]; i++)
		if (b[i])
			snprintf(err, errlen, "the grown part of an area is not zero at word %zu", i);
	munmap(b, big);
	if (!err[0] && mincore(b, page, &vec) == 0)
		snprintf(err, errlen, "an unmapped area is still mapped");
	if (err[0])
		return;

	/* A page dropped reads zero, then takes new data. */
	p = keep + (size_t)(round % (KEEP / page)) * page / 8;
	if (madvise(p, page, MADV_DONTNEED)) {
		snprintf(err, errlen, "madvise DONTNEED: %s", strerror(errno));
		return;
	}
	if (in_last_round && zdtm_sabotage == 4)
		zdtm_fill(p, page, 7 + (p - keep));
	for (size_t i = 0; i < page / 8; i++)
		if (p[i]) {
			snprintf(err, errlen, "a page dropped with MADV_DONTNEED reads %#llx at word %zu",
				 (unsigned long long)p[i], i);
			return;
		}
	zdtm_fill(p, page, 7 + (p - keep));
}

/* ----------------------------------------------------------------- round */

static void put_file(const char *name, const char *text)
{
	char path[4096], tmp[4200];
	int fd;
	size_t len = strlen(text);

	zdtm_path(path, sizeof(path), name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len || close(fd) || rename(tmp, path))
		zdtm_log("write %s: %s", path, strerror(errno));
}

/* One round of new work; returns its error ("" when it passed). */
static const char *round_of_work(char *err, size_t errlen)
{
	int round = ++rounds_done;

	err[0] = 0;
	threads_step(err, errlen);
	if (!err[0])
		pool_step(err, errlen);
	if (!err[0])
		fork_step(zdtm_mix(round) % 100000, err, errlen);
	if (!err[0])
		mem_step(round, err, errlen);
	if (err[0]) {
		char msg[700];
		snprintf(msg, sizeof(msg), "round %d: %s", round, err);
		snprintf(err, errlen, "%s", msg);
		if (!first_error[0])
			snprintf(first_error, sizeof(first_error), "%s", err);
		zdtm_log("%s", err);
	}
	return err;
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* a page of the table reads as zero (a page the fill missed) */
		madvise((char *)table + 3 * SLICE + 8192, 4096, MADV_DONTNEED);
		break;
	case 3: /* a pool worker is gone */
		pthread_mutex_lock(&pool_mu);
		worker_stop[2] = 1;
		pthread_cond_broadcast(&pool_cv);
		pthread_mutex_unlock(&pool_mu);
		pthread_join(workers[2], NULL);
		break;
	/* 2, 4 and 5 act inside the last round. */
	}
}

int main(int argc, char **argv)
{
	char err[600] = "", msg[700];
	struct sigaction sa;
	ssize_t n;

	if (argc == 3 && !strcmp(argv[1], "exec-child"))
		return exec_status(strtoull(argv[2], NULL, 10));
	zdtm_init();
	n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
	if (n <= 0)
		zdtm_die("readlink /proc/self/exe: %s", strerror(errno));
	self_exe[n] = 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		zdtm_die("sigaction SIGUSR1: %s", strerror(errno));

	table = mmap(NULL, TABLE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	keep = mmap(NULL, KEEP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (table == MAP_FAILED || keep == MAP_FAILED)
		zdtm_die("mmap: %s", strerror(errno));
	zdtm_fill(table, TABLE, 100);
	zdtm_fill(keep, KEEP, 7);
	for (int s = 0; s < SLICES; s++)
		slice_sum[s] = slice_digest(s, NULL, 0);

	for (long w = 0; w < WORKERS; w++)
		if (pthread_create(&workers[w], NULL, worker, (void *)w))
			zdtm_die("pthread_create worker %ld", w);
	pthread_mutex_lock(&pool_mu);
	while (pool_started < WORKERS)
		pthread_cond_wait(&pool_cv, &pool_mu);
	pthread_mutex_unlock(&pool_mu);

	/* Each kind of work once before ready (twice for the threads, so the
	 * cache holds stacks of both sizes). */
	threads_step(err, sizeof(err));
	if (!err[0])
		round_of_work(err, sizeof(err));
	if (err[0])
		zdtm_die("%s", err);
	rounds_done = 0;

	zdtm_ready();
	while (!zdtm_stop) {
		if (kicks) {
			kicks = 0;
			round_of_work(err, sizeof(err));
			if (err[0])
				snprintf(msg, sizeof(msg), "FAIL: %s\n", err);
			else
				snprintf(msg, sizeof(msg), "ok\n");
			put_file("round", msg);
			continue;
		}
		zdtm_sleep_ms(10);
	}
	sabotage();
	in_last_round = 1;
	round_of_work(err, sizeof(err));
	zdtm_check(!first_error[0], "%s", first_error);
	for (int s = 0; s < SLICES; s++) {
		char e[160] = "";
		zdtm_check(slice_digest(s, e, sizeof(e)) == slice_sum[s] && !e[0], "at the end: %s",
			   e[0] ? e : "a table slice changed");
	}
	zdtm_check(zdtm_diff(keep, KEEP, 7) < 0, "the 32 MiB area differs at word %ld",
		   zdtm_diff(keep, KEEP, 7));
	zdtm_log("%d rounds of new work before SIGTERM, and the last", rounds_done - 1);
	pthread_mutex_lock(&pool_mu);
	pool_quit = 1;
	pthread_cond_broadcast(&pool_cv);
	pthread_mutex_unlock(&pool_mu);
	for (int w = 0; w < WORKERS; w++)
		if (!(zdtm_sabotage == 3 && w == 2))
			pthread_join(workers[w], NULL);
	zdtm_pass();
}
