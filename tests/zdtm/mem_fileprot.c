/*
 * mem_fileprot: what mprotect allows on file mappings, which depends on how
 * the file was opened when it was mapped (the area's VM_MAY* flags: mr mw
 * me ms in VmFlags), not on the current protection.
 *
 * State: a file opened read-only and mapped MAP_PRIVATE PROT_READ (mprotect
 * may add PROT_WRITE: the writes stay private); one opened read-write and
 * mapped MAP_SHARED PROT_READ (mprotect may add PROT_WRITE: writes reach
 * the file); one opened read-only and mapped MAP_SHARED PROT_READ (mprotect
 * may not add PROT_WRITE); a private mapping of a read-only file with
 * PROT_NONE; a private PROT_READ mapping that was made writable, written
 * and made read-only again. Every descriptor is closed after mapping.
 * The verification writes page 2 of each (the same bytes every time).
 * Verified: VmFlags of every area as at ready; mprotect to read-write
 * succeeds or fails (EACCES) as before; writes land in the mapping only
 * (private) or in the file (shared); the files hold their data.
 */
#include "zdtm.h"

#include <sys/mman.h>

#define PG 4096UL
#define PAGES 4

enum { PRIV_RO, SHARED_RW, SHARED_RO, PRIV_NONE, PRIV_WRITTEN, NAREAS };
static const char *names[NAREAS] = { "private of a read-only file", "shared of a read-write file", "shared of a read-only file",
				     "private PROT_NONE of a read-only file", "private, written, read-only again" };
static const int open_flags[NAREAS] = { O_RDONLY, O_RDWR, O_RDONLY, O_RDONLY, O_RDONLY };
static const int map_flags[NAREAS] = { MAP_PRIVATE, MAP_SHARED, MAP_SHARED, MAP_PRIVATE, MAP_PRIVATE };
static const int map_prot[NAREAS] = { PROT_READ, PROT_READ, PROT_READ, PROT_NONE, PROT_READ };
/* Whether mprotect(PROT_READ | PROT_WRITE) succeeds. */
static const int may_write[NAREAS] = { 1, 1, 0, 1, 1 };

static char *areas[NAREAS];
static char files[NAREAS][4096];
static char flags[NAREAS][160];

static uint64_t seed(int area, int page) { return 0xf9000000ULL + area * 0x10000 + page * 512; }

static void vmflags(const char *start, char *out, size_t size)
{
	static char smaps[1 << 20];
	char want[32];
	const char *p;

	out[0] = 0;
	if (zdtm_read_file("/proc/self/smaps", smaps, sizeof(smaps)) <= 0)
		return;
	snprintf(want, sizeof(want), "%lx-", (unsigned long)start);
	for (p = smaps; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, want, strlen(want)))
			continue;
		p = strstr(p, "VmFlags:");
		if (!p)
			return;
		p += 8;
		while (*p == ' ')
			p++;
		snprintf(out, size, "%.*s", (int)(strchr(p, '\n') ? strchr(p, '\n') - p : (long)strlen(p)), p);
		return;
	}
}

static void sabotage(void)
{
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* the read-only file's shared mapping remapped from a read-write descriptor */
		fd = open(files[SHARED_RO], O_RDWR);
		mmap(areas[SHARED_RO], PAGES * PG, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
		close(fd);
		break;
	case 2: /* the read-write file's shared mapping remapped from a read-only descriptor */
		fd = open(files[SHARED_RW], O_RDONLY);
		mmap(areas[SHARED_RW], PAGES * PG, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
		close(fd);
		break;
	case 3: /* the private write lost */
		mprotect(areas[PRIV_WRITTEN], PAGES * PG, PROT_READ | PROT_WRITE);
		zdtm_fill(areas[PRIV_WRITTEN] + PG, PG, seed(PRIV_WRITTEN, 1));
		mprotect(areas[PRIV_WRITTEN], PAGES * PG, PROT_READ);
		break;
	}
}

int main(void)
{
	static char page[PG];
	char now[160], name[64];

	zdtm_init();
	for (int i = 0; i < NAREAS; i++) {
		int fd;
		snprintf(name, sizeof(name), "mem_fileprot.%d", i);
		zdtm_path(files[i], sizeof(files[i]), name);
		fd = open(files[i], O_RDWR | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			zdtm_die("create %s: %s", files[i], strerror(errno));
		for (int pg = 0; pg < PAGES; pg++) {
			zdtm_fill(page, PG, seed(i, pg));
			if (pwrite(fd, page, PG, pg * PG) != (ssize_t)PG)
				zdtm_die("write %s: %s", files[i], strerror(errno));
		}
		close(fd);
		fd = open(files[i], open_flags[i]);
		if (fd < 0)
			zdtm_die("open %s: %s", files[i], strerror(errno));
		areas[i] = mmap(NULL, PAGES * PG, map_prot[i], map_flags[i], fd, 0);
		if (areas[i] == MAP_FAILED)
			zdtm_die("mmap %s: %s", names[i], strerror(errno));
		close(fd);
	}
	/* Written privately, then read-only again. */
	if (mprotect(areas[PRIV_WRITTEN], PAGES * PG, PROT_READ | PROT_WRITE))
		zdtm_die("mprotect: %s", strerror(errno));
	zdtm_fill(areas[PRIV_WRITTEN] + PG, PG, seed(PRIV_WRITTEN, 1) + 7);
	if (mprotect(areas[PRIV_WRITTEN], PAGES * PG, PROT_READ))
		zdtm_die("mprotect: %s", strerror(errno));
	/* The probes the verification runs must agree now. */
	if (mprotect(areas[SHARED_RO], PAGES * PG, PROT_READ | PROT_WRITE) == 0 || errno != EACCES)
		zdtm_die("mprotect of a shared mapping of a read-only file did not fail with EACCES");
	for (int i = 0; i < NAREAS; i++)
		vmflags(areas[i], flags[i], sizeof(flags[i]));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < NAREAS; i++) {
		vmflags(areas[i], now, sizeof(now));
		zdtm_check(!strcmp(now, flags[i]), "%s: VmFlags \"%s\", were \"%s\"", names[i], now, flags[i]);
	}
	zdtm_check(zdtm_diff(areas[PRIV_WRITTEN] + PG, PG, seed(PRIV_WRITTEN, 1) + 7) < 0, "%s: the private write is lost",
		   names[PRIV_WRITTEN]);
	for (int i = 0; i < NAREAS; i++) {
		int r = mprotect(areas[i], PAGES * PG, PROT_READ | PROT_WRITE);
		if (!may_write[i]) {
			zdtm_check(r < 0 && errno == EACCES, "%s: mprotect to read-write %s", names[i],
				   r ? strerror(errno) : "succeeded, it was refused before");
			continue;
		}
		zdtm_check(r == 0, "%s: mprotect to read-write failed: %s", names[i], strerror(errno));
		for (int pg = 0; pg < PAGES; pg++) {
			uint64_t want = seed(i, pg) + (i == PRIV_WRITTEN && pg == 1 ? 7 : 0);
			/* An earlier verification (leave-running) may have written it. */
			int again = i == SHARED_RW && pg == 2 && zdtm_diff(areas[i] + pg * PG, PG, want + 11) < 0;
			zdtm_check(again || zdtm_diff(areas[i] + pg * PG, PG, want) < 0, "%s: page %d holds other data", names[i], pg);
		}
		zdtm_fill(areas[i] + 2 * PG, PG, seed(i, 2) + 11);
	}
	msync(areas[SHARED_RW], PAGES * PG, MS_SYNC);
	for (int i = 0; i < NAREAS; i++) {
		int fd = open(files[i], O_RDONLY);
		zdtm_check(fd >= 0 && pread(fd, page, PG, 2 * PG) == (ssize_t)PG, "read %s: %s", files[i], strerror(errno));
		close(fd);
		uint64_t want = seed(i, 2) + (i == SHARED_RW ? 11 : 0);
		zdtm_check(zdtm_diff(page, PG, want) < 0, "%s: the file holds %s", names[i],
			   i == SHARED_RW ? "not what was written through the shared mapping" : "a private write");
	}
	zdtm_pass();
}
