/* Shared memory written by several processes while they migrate: a
 * MAP_SHARED anonymous area, a SysV segment, a memfd and a /dev/shm file,
 * each mapped by the parent and its WRITERS children (forked before
 * "ready"), each writer sweeping its own slice of every object again and
 * again, a page at a time and slowly (pre-copy has rounds to do).
 *
 * A page of writer w holds, in every 8-byte word, (gen << 32) | (w << 16)
 * | page; the header page of each object holds, at word w, the last
 * generation w finished. A sweep writes generation g+1 from the slice's
 * first page to its last, then the header: at any moment a slice reads as
 * g+1 on a prefix and g on the rest, g being the header's (or all g+1,
 * just before the header moves). A write lost by a move shows as an older
 * generation, a broken prefix, or a torn page. The second half of each
 * object is never touched: holes that must stay holes. The last writer
 * writes its slice of the anonymous area through a mapping of its own of
 * that slice only (at an offset in the object, through
 * /proc/self/map_files).
 *
 * Usage: shm_writers LOG. Logs "ready PID" once every slice went round
 * twice, then "gen N" every second (the parent's own sweeps). The test
 * checks the objects from outside through /proc/PID/map_files.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WRITERS 4 /* the parent is writer 0 */
#define NOBJ 4

struct obj {
	const char *name;
	size_t size;
	size_t slice; /* pages per writer, after the header page */
	char *p;
	/* The last writer's own mapping of its slice, or 0. */
	char *alt;
};

static struct obj objs[NOBJ] = {
	{"anon", 16 << 20, 256, 0, 0},
	{"sysv", 8 << 20, 256, 0, 0},
	{"memfd", 1 << 20, 16, 0, 0},
	{"posix", 4 << 20, 16, 0, 0},
};

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void fill(struct obj *o, int w, size_t page, uint64_t gen)
{
	uint64_t *q = (uint64_t *)(o->p + (1 + w * o->slice + page) * PAGE);
	if (o->alt)
		q = (uint64_t *)(o->alt + page * PAGE);
	uint64_t v = (gen << 32) | ((uint64_t)w << 16) | page;
	for (size_t i = 0; i < PAGE / 8; i++)
		q[i] = v;
}

static void sweep(int w, uint64_t gen, long pause_ns)
{
	struct timespec ts = {0, pause_ns};
	for (int k = 0; k < NOBJ; k++) {
		struct obj *o = &objs[k];
		for (size_t page = 0; page < o->slice; page++) {
			fill(o, w, page, gen);
			if (pause_ns)
				nanosleep(&ts, 0);
		}
		__atomic_store_n((uint64_t *)o->p + w, gen, __ATOMIC_RELEASE);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: shm_writers LOG\n");
		return 2;
	}
	FILE *log = fopen(argv[1], "a");
	if (!log)
		die("open log");
	setvbuf(log, 0, _IOLBF, 0);

	objs[0].p = mmap(0, objs[0].size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (objs[0].p == MAP_FAILED)
		die("mmap shared anonymous");
	int id = shmget(IPC_PRIVATE, objs[1].size, IPC_CREAT | 0600);
	if (id < 0)
		die("shmget");
	objs[1].p = shmat(id, 0, 0);
	if (objs[1].p == (void *)-1)
		die("shmat");
	/* Removed once every process detaches: nothing is left behind. */
	shmctl(id, IPC_RMID, 0);
	int mfd = memfd_create("shm_writers", MFD_CLOEXEC);
	if (mfd < 0 || ftruncate(mfd, objs[2].size))
		die("memfd");
	objs[2].p = mmap(0, objs[2].size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (objs[2].p == MAP_FAILED)
		die("mmap memfd");
	char name[64];
	snprintf(name, sizeof name, "/lpm-shm-writers-%d", (int)getpid());
	int pfd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (pfd < 0 || ftruncate(pfd, objs[3].size))
		die("shm_open");
	shm_unlink(name);
	objs[3].p = mmap(0, objs[3].size, PROT_READ | PROT_WRITE, MAP_SHARED, pfd, 0);
	if (objs[3].p == MAP_FAILED)
		die("mmap /dev/shm");
	close(pfd);

	/* Two sweeps of every slice before ready, in every writer. */
	for (int w = 0; w < WRITERS; w++) {
		sweep(w, 1, 0);
		sweep(w, 2, 0);
	}
	for (int w = 1; w < WRITERS; w++) {
		pid_t c = fork();
		if (c < 0)
			die("fork");
		if (c == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (w == WRITERS - 1) {
				struct obj *o = &objs[0];
				char path[96];
				snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)o->p,
					 (unsigned long)o->p + o->size);
				int fd = open(path, O_RDWR);
				if (fd < 0)
					die("open the anonymous area's object");
				o->alt = mmap(0, o->slice * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
					      (1 + w * o->slice) * PAGE);
				if (o->alt == MAP_FAILED)
					die("map a slice of the anonymous area's object");
				close(fd);
			}
			/* Each writer a little slower than the last. */
			for (uint64_t gen = 3;; gen++)
				sweep(w, gen, 1000000 + 200000 * w);
		}
	}
	fprintf(log, "ready %d\n", (int)getpid());
	time_t last = 0;
	for (uint64_t gen = 3;; gen++) {
		sweep(0, gen, 1000000);
		if (time(0) != last) {
			last = time(0);
			fprintf(log, "gen %llu\n", (unsigned long long)gen);
		}
		while (waitpid(-1, 0, WNOHANG) > 0)
			fprintf(log, "a writer died\n");
	}
}
