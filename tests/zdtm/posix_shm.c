/*
 * posix_shm: POSIX shared memory (shm_open under /dev/shm), which lpm
 * handles as a regular file and a shared file mapping.
 *
 * State: an object of 3 pages named after the run (ZDTM_RUN), patterned,
 * open read-write at fd 3 with its offset at 5000, mapped MAP_SHARED in the
 * parent and, by fork, in a child; a second, read-only fd 4 and a
 * read-only mapping of the last page. The object stays in /dev/shm after
 * the program ends (a later restore from the same images needs it): its
 * runner removes it when the run ends. (A start does not sweep others'
 * objects: runs of other test binaries go on beside it.)
 * Verified: the pattern through the mapping and through pread; fd offsets
 * and flags; a ping-pong with the child through the shared mapping; a write
 * through the mapping seen by pread.
 */
#include "zdtm.h"

#include <sys/mman.h>

#define SIZE (3 * 4096)

static char name[256], page[4096];

int main(void)
{
	const char *run = getenv("ZDTM_RUN");
	volatile int *cell;
	long long deadline;
	char *map, *ro;
	pid_t child;
	int fd, rfd;

	zdtm_init();
	if (!run)
		zdtm_die("ZDTM_RUN is not set");
	snprintf(name, sizeof(name), "/lpm-zdtm-shm-%s", run);
	fd = shm_open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd != 3)
		zdtm_die("shm_open %s: fd %d: %s", name, fd, strerror(errno));
	if (ftruncate(fd, SIZE))
		zdtm_die("ftruncate: %s", strerror(errno));
	rfd = shm_open(name, O_RDONLY, 0);
	if (rfd != 4)
		zdtm_die("shm_open read-only: fd %d: %s", rfd, strerror(errno));
	map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ro = mmap(NULL, 4096, PROT_READ, MAP_SHARED, rfd, 2 * 4096);
	if (map == MAP_FAILED || ro == MAP_FAILED)
		zdtm_die("mmap: %s", strerror(errno));
	zdtm_fill(map, SIZE, 7);
	cell = (volatile int *)(map + 4096 + 64);
	*cell = 0;
	if (lseek(fd, 5000, SEEK_SET) != 5000)
		zdtm_die("lseek: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		for (;;) {
			if (*cell & 1)
				*cell = *cell + 1;
			zdtm_sleep_ms(1);
		}
	}
	zdtm_kid(child);

	zdtm_ready();
	zdtm_wait();

	if (zdtm_sabotage == 1)
		map[3000]++;
	if (zdtm_sabotage == 2)
		lseek(fd, 0, SEEK_SET);
	if (zdtm_sabotage == 3)
		kill(child, SIGKILL);

	*cell = 0;
	zdtm_check(zdtm_diff(map, 4096, 7) < 0, "page 0 differs at word %ld", zdtm_diff(map, 4096, 7));
	zdtm_check(zdtm_diff(ro, 4096, 7 + 1024) < 0, "the read-only mapping differs");
	zdtm_check(pread(rfd, page, 4096, 2 * 4096) == 4096 && zdtm_diff(page, 4096, 7 + 1024) < 0,
		   "pread of page 2 differs");
	zdtm_check(lseek(fd, 0, SEEK_CUR) == 5000, "fd 3 offset %lld", (long long)lseek(fd, 0, SEEK_CUR));
	zdtm_check((fcntl(rfd, F_GETFL) & O_ACCMODE) == O_RDONLY, "fd 4 flags %#o", fcntl(rfd, F_GETFL));
	*cell = 41;
	deadline = zdtm_now_ms() + 10000;
	while (*cell != 42) {
		zdtm_check(zdtm_now_ms() < deadline, "the child does not answer through the mapping");
		zdtm_sleep_ms(2);
	}
	zdtm_check(pread(fd, page, 4, 4096 + 64) == 4 && *(int *)page == 42, "pread does not see the mapping's write");
	zdtm_pass();
}
