/*
 * mem_shmem_private: private mappings of shared memory objects, whose
 * written pages are the process's own and whose other pages are the
 * object's (and follow it).
 *
 * State: three objects of 8 pages with data: a shared anonymous area
 * (MAP_SHARED|MAP_ANONYMOUS, mapped shared too), a memfd whose descriptor
 * is kept, a /dev/shm file whose descriptor is kept; each also mapped
 * MAP_PRIVATE (the anonymous one through /proc/self/map_files), with pages
 * 0 and 3 written through the private mapping, pages 1 and 2 read through
 * it, and page 5 a hole of the memfd and the file. A fourth object, a memfd
 * "zdtm-nofd", is mapped privately only (its descriptor closed), with page
 * 0 written.
 * Verified: through each private mapping, the pages written hold what was
 * written and the others the object's data (zero for the holes); the
 * objects do not hold the private writes; a write into the object now
 * shows through the private mapping on a page it did not write (page 6)
 * and not on one it did (page 3).
 */
#include "zdtm.h"

#include <sys/mman.h>

#define PG 4096UL
#define PAGES 8

enum { ANON, MEMFD, SHMFILE, NOFD, NOBJ };
static const char *names[NOBJ] = { "shared anonymous area", "memfd", "/dev/shm file", "memfd without descriptor" };

static char *shared[NOBJ], *priv[NOBJ];
static int fds[NOBJ] = { -1, -1, -1, -1 };
static char shm_path[256];

static uint64_t obj_seed(int o, int page) { return 0x5e000000ULL + o * 0x10000 + page * 512; }
static uint64_t priv_seed(int o, int page) { return 0x9e000000ULL + o * 0x10000 + page * 512; }
static int hole(int o, int page) { return (o == MEMFD || o == SHMFILE) && page == 5; }
static int written(int o, int page) { return page == 0 || (o != NOFD && page == 3); }

static int is_zero(const char *p)
{
	for (size_t i = 0; i < PG; i++)
		if (p[i])
			return 0;
	return 1;
}

/* Writes into the object (not through the private mapping). */
static void obj_write(int o, int page, uint64_t seed)
{
	static char buf[PG];

	if (o == ANON) {
		zdtm_fill(shared[o] + page * PG, PG, seed);
		return;
	}
	zdtm_fill(buf, PG, seed);
	if (pwrite(fds[o], buf, PG, page * PG) != (ssize_t)PG)
		zdtm_fail("write into the %s: %s", names[o], strerror(errno));
}

static void obj_read(int o, int page, char *buf)
{
	if (o == ANON) {
		memcpy(buf, shared[o] + page * PG, PG);
		return;
	}
	if (pread(fds[o], buf, PG, page * PG) != (ssize_t)PG)
		zdtm_fail("read the %s: %s", names[o], strerror(errno));
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the first private page lost: the object's page again */
		madvise(priv[MEMFD], PG, MADV_DONTNEED);
		break;
	case 2: /* a private write reached the object */
		obj_write(ANON, 3, priv_seed(ANON, 3));
		break;
	case 3: /* the private mapping is a copy: it no longer follows the object */
	{
		char *p = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memcpy(p, priv[SHMFILE], PAGES * PG);
		mremap(p, PAGES * PG, PAGES * PG, MREMAP_MAYMOVE | MREMAP_FIXED, priv[SHMFILE]);
		break;
	}
	case 4: /* the page without descriptor changed */
		priv[NOFD][9] ^= 1;
		break;
	}
}

int main(void)
{
	static char buf[PG];
	char path[128];
	const char *run = getenv("ZDTM_RUN");

	zdtm_init();
	if (!run)
		zdtm_die("ZDTM_RUN is not set");
	/* The runner removes /dev/shm/lpm-zdtm-shm-<run> however the run ends. */
	snprintf(shm_path, sizeof(shm_path), "/dev/shm/lpm-zdtm-shm-%s", run);
	shared[ANON] = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fds[MEMFD] = memfd_create("zdtm-priv", 0);
	fds[SHMFILE] = open(shm_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	fds[NOFD] = memfd_create("zdtm-nofd", 0);
	if (shared[ANON] == MAP_FAILED || fds[MEMFD] < 0 || fds[SHMFILE] < 0 || fds[NOFD] < 0)
		zdtm_die("create the objects: %s", strerror(errno));
	for (int o = MEMFD; o < NOBJ; o++)
		if (ftruncate(fds[o], PAGES * PG))
			zdtm_die("ftruncate: %s", strerror(errno));
	for (int o = 0; o < NOBJ; o++)
		for (int pg = 0; pg < PAGES; pg++)
			if (!hole(o, pg))
				obj_write(o, pg, obj_seed(o, pg));
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)shared[ANON], (unsigned long)shared[ANON] + PAGES * PG);
	fds[ANON] = open(path, O_RDWR);
	if (fds[ANON] < 0)
		zdtm_die("open %s: %s", path, strerror(errno));
	for (int o = 0; o < NOBJ; o++) {
		priv[o] = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fds[o], 0);
		if (priv[o] == MAP_FAILED)
			zdtm_die("mmap private %s: %s", names[o], strerror(errno));
		for (int pg = 0; pg < PAGES; pg++)
			if (written(o, pg))
				zdtm_fill(priv[o] + pg * PG, PG, priv_seed(o, pg));
			else if (pg == 1 || pg == 2 || hole(o, pg))
				(void)*(volatile char *)(priv[o] + pg * PG);
	}
	close(fds[ANON]);
	close(fds[NOFD]);
	fds[ANON] = fds[NOFD] = -1;
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int o = 0; o < NOBJ; o++) {
		for (int pg = 0; pg < PAGES; pg++) {
			const char *p = priv[o] + pg * PG;
			if (written(o, pg)) {
				zdtm_check(zdtm_diff(p, PG, priv_seed(o, pg)) < 0, "%s: private page %d lost what was written", names[o], pg);
				continue;
			}
			if (hole(o, pg)) {
				zdtm_check(is_zero(p), "%s: private page %d (a hole) is not zero", names[o], pg);
				continue;
			}
			/* Page 6 may hold what an earlier verification wrote. */
			zdtm_check(zdtm_diff(p, PG, obj_seed(o, pg)) < 0 || (pg == 6 && zdtm_diff(p, PG, obj_seed(o, pg) + 1) < 0),
				   "%s: private page %d does not show the object's data", names[o], pg);
		}
		if (o == NOFD)
			continue;
		obj_read(o, 3, buf);
		zdtm_check(zdtm_diff(buf, PG, obj_seed(o, 3)) < 0, "%s: the object holds the private write of page 3", names[o]);
		obj_read(o, 0, buf);
		zdtm_check(zdtm_diff(buf, PG, obj_seed(o, 0)) < 0, "%s: the object holds the private write of page 0", names[o]);
		obj_write(o, 6, obj_seed(o, 6) + 1);
		obj_write(o, 3, obj_seed(o, 3));
		zdtm_check(zdtm_diff(priv[o] + 6 * PG, PG, obj_seed(o, 6) + 1) < 0,
			   "%s: a write into the object does not show through the private mapping", names[o]);
		zdtm_check(zdtm_diff(priv[o] + 3 * PG, PG, priv_seed(o, 3)) < 0,
			   "%s: a write into the object shows over a private page", names[o]);
	}
	zdtm_pass();
}
