/* Shared memory written by processes that come and go while they
 * migrate: a MAP_SHARED anonymous area and a SysV segment, each with a
 * header page, a slice the children write and a slice the parent writes.
 *
 * For every generation g the parent forks a child that writes g into
 * every page of the children's slice, first page to last, and exits at
 * once (every fourth child pauses between pages, so that some are still
 * writing when pre-copy hears of them); the parent reaps it, then sets
 * header word 0 to g, writes g into its own slice and sets header word 1
 * to g. A page of slice s holds, in every 8-byte word, (gen << 32) |
 * (s << 16) | page. At any moment each slice reads as g+1 on a prefix and
 * g on the rest (g its header word), at most one page torn between them.
 * A write of a child that pre-copy did not see shows as an older
 * generation. Each writer also checks its slice before it writes the
 * next generation (no one else writes it meanwhile): every page must hold
 * the generation its header says, or it logs "BAD" and the program ends.
 * The second half of each object is never touched: holes
 * that must stay holes.
 *
 * Usage: shm_forkers LOG [fast]. Logs "gen N" every second. With "fast"
 * no child pauses: each is gone long before pre-copy could track it. The test checks the
 * objects from outside through /proc/PID/map_files.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define SLICE 32 /* pages per slice */
#define NOBJ 2
#define SIZE (4 << 20)

static char *objs[NOBJ];

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void fill(int s, uint64_t gen, long pause_ns)
{
	struct timespec ts = {0, pause_ns};
	for (int k = 0; k < NOBJ; k++) {
		for (size_t page = 0; page < SLICE; page++) {
			uint64_t *q = (uint64_t *)(objs[k] + (1 + s * SLICE + page) * PAGE);
			uint64_t v = (gen << 32) | ((uint64_t)s << 16) | page;
			for (size_t i = 0; i < PAGE / 8; i++)
				q[i] = v;
			if (pause_ns)
				nanosleep(&ts, 0);
		}
	}
}

/* The first page of slice s that does not hold gen everywhere, or -1. */
static long stale(int s, uint64_t gen)
{
	for (int k = 0; k < NOBJ; k++) {
		for (size_t page = 0; page < SLICE; page++) {
			uint64_t *q = (uint64_t *)(objs[k] + (1 + s * SLICE + page) * PAGE);
			uint64_t v = (gen << 32) | ((uint64_t)s << 16) | page;
			for (size_t i = 0; i < PAGE / 8; i++)
				if (q[i] != v)
					return k * SLICE + page;
		}
		if (__atomic_load_n((uint64_t *)objs[k] + s, __ATOMIC_ACQUIRE) != gen)
			return k * SLICE + SLICE;
	}
	return -1;
}

static void header(int s, uint64_t gen)
{
	for (int k = 0; k < NOBJ; k++)
		__atomic_store_n((uint64_t *)objs[k] + s, gen, __ATOMIC_RELEASE);
}

int main(int argc, char **argv)
{
	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: shm_forkers LOG [fast]\n");
		return 2;
	}
	FILE *log = fopen(argv[1], "a");
	if (!log)
		die("open log");
	setvbuf(log, 0, _IOLBF, 0);
	objs[0] = mmap(0, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (objs[0] == MAP_FAILED)
		die("mmap shared anonymous");
	int id = shmget(IPC_PRIVATE, SIZE, IPC_CREAT | 0600);
	if (id < 0)
		die("shmget");
	objs[1] = shmat(id, 0, 0);
	if (objs[1] == (void *)-1)
		die("shmat");
	/* Removed once every process detaches: nothing is left behind. */
	shmctl(id, IPC_RMID, 0);

	time_t last = 0;
	struct timespec nap = {0, 2000000};
	for (uint64_t gen = 1;; gen++) {
		pid_t c = fork();
		if (c < 0)
			die("fork");
		if (c == 0) {
			long bad = gen > 1 ? stale(0, gen - 1) : -1;
			if (bad >= 0) {
				fprintf(log, "BAD children's slice, generation %llu, page %ld\n", (unsigned long long)gen - 1, bad);
				_exit(3);
			}
			fill(0, gen, gen % 4 == 0 && argc == 2 ? 200000 : 0);
			_exit(0);
		}
		int st;
		if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(log, "a child died (status %#x)\n", st);
			return 1;
		}
		header(0, gen);
		long bad = gen > 1 ? stale(1, gen - 1) : -1;
		if (bad >= 0) {
			fprintf(log, "BAD parent's slice, generation %llu, page %ld\n", (unsigned long long)gen - 1, bad);
			return 1;
		}
		fill(1, gen, 0);
		header(1, gen);
		if (time(0) != last) {
			last = time(0);
			fprintf(log, "gen %llu\n", (unsigned long long)gen);
		}
		nanosleep(&nap, 0);
	}
}
