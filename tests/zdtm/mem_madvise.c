/*
 * mem_madvise: the flags of private areas that madvise, mlock and mmap's
 * map type set, as /proc/self/smaps shows them (VmFlags).
 *
 * State: private anonymous areas of 8 pages with data, each given one
 * advice: MADV_DONTFORK (dc), MADV_DONTDUMP (dd), MADV_WIPEONFORK (wf),
 * MADV_HUGEPAGE (hg), MADV_NOHUGEPAGE (nh), MADV_MERGEABLE (mg),
 * MADV_SEQUENTIAL (sr), MADV_RANDOM (rr); one with several (DONTDUMP +
 * NOHUGEPAGE + WIPEONFORK); one advised on its middle pages only (the
 * area splits in three); one locked with mlock (lo) and one with
 * mlock2(MLOCK_ONFAULT) (lo lf); a MAP_NORESERVE area (nr); a
 * MAP_DROPPABLE area (dp, wf, dd: its pages may be dropped under memory
 * pressure, never written to a dump, not inherited by a child); a
 * read-only area mapped so (no ac: never charged as writable); a
 * read-only one that was written, emptied (MADV_DONTNEED) and made
 * read-only (ac stays, though it holds no page). Then the
 * whole process made mergeable (PR_SET_MEMORY_MERGE: every eligible
 * area gets mg, and so will new ones), and one area unmerged again.
 * Verified: the VmFlags line of every area is exactly what it was at
 * ready; the data of each area (the droppable one may have lost pages,
 * which then read zero); PR_GET_MEMORY_MERGE; what a child forked now
 * sees: no DONTFORK area, zero pages in the WIPEONFORK and droppable
 * areas.
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif

#define PG 4096UL
#define PAGES 8

enum {
	DONTFORK,
	DONTDUMP,
	WIPEONFORK,
	HUGEPAGE,
	NOHUGEPAGE,
	MERGEABLE,
	SEQUENTIAL,
	RANDOM,
	SEVERAL,
	SPLIT,
	LOCKED,
	ONFAULT,
	NORESERVE,
	DROPPABLE,
	READONLY,
	CHARGED,
	UNMERGED,
	NAREAS
};

static const char *names[NAREAS] = { "dontfork", "dontdump", "wipeonfork", "hugepage",  "nohugepage", "mergeable",
				     "sequential", "random", "several",    "split",     "locked",     "onfault",
				     "noreserve", "droppable", "readonly", "charged", "unmerged" };

static char *areas[NAREAS];
/* VmFlags at ready of each area; the split one has three parts. */
static char flags[NAREAS][3][160];

static uint64_t seed(int area, int page) { return 0xad0000ULL + area * 0x10000 + page * 512; }

/* The VmFlags of the area starting at `start`, or "" when there is none. */
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

static int has_flag(const char *line, const char *f)
{
	size_t n = strlen(f);
	for (const char *p = line; (p = strstr(p, f)); p++)
		if ((p == line || p[-1] == ' ') && (p[n] == ' ' || !p[n]))
			return 1;
	return 0;
}

static void record(int i, char out[3][160])
{
	vmflags(areas[i], out[0], 160);
	if (i == SPLIT) {
		vmflags(areas[i] + 2 * PG, out[1], 160);
		vmflags(areas[i] + 6 * PG, out[2], 160);
	}
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* an advice lost (DONTFORK cleared) */
		madvise(areas[DONTFORK], PAGES * PG, MADV_DOFORK);
		break;
	case 2: /* an advice added */
		madvise(areas[DONTDUMP], PAGES * PG, MADV_HUGEPAGE);
		break;
	case 3: /* the lock lost */
		munlock(areas[LOCKED], PAGES * PG);
		break;
	case 4: /* the droppable area is now an ordinary private one */
	{
		void *p = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memcpy(p, areas[DROPPABLE], PAGES * PG);
		mremap(p, PAGES * PG, PAGES * PG, MREMAP_MAYMOVE | MREMAP_FIXED, areas[DROPPABLE]);
		break;
	}
	case 5: /* the split area merged back (advice undone on its middle) */
		madvise(areas[SPLIT] + 2 * PG, 4 * PG, MADV_DODUMP);
		break;
	case 6: /* the read-only area charged as writable once (a page written keeps the charge) */
		mprotect(areas[READONLY], PAGES * PG, PROT_READ | PROT_WRITE);
		areas[READONLY][0] = 0;
		mprotect(areas[READONLY], PAGES * PG, PROT_READ);
		break;
	case 7: /* the process no longer mergeable as a whole */
		prctl(PR_SET_MEMORY_MERGE, 0, 0, 0, 0);
		break;
	}
}

int main(void)
{
	static const int advice[] = { MADV_DONTFORK,   MADV_DONTDUMP,  MADV_WIPEONFORK, MADV_HUGEPAGE,
				      MADV_NOHUGEPAGE, MADV_MERGEABLE, MADV_SEQUENTIAL, MADV_RANDOM };
	char now[3][160];
	pid_t child;
	int st;

	zdtm_init();
	for (int i = 0; i < NAREAS; i++) {
		int f = MAP_PRIVATE | MAP_ANONYMOUS;
		if (i == NORESERVE)
			f |= MAP_NORESERVE;
		if (i == DROPPABLE)
			f = MAP_DROPPABLE | MAP_ANONYMOUS;
		/* A guard page between areas, so no two merge. */
		char *guard = mmap(NULL, (PAGES + 1) * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (guard == MAP_FAILED)
			zdtm_die("mmap guard: %s", strerror(errno));
		areas[i] = mmap(guard, PAGES * PG, PROT_READ | PROT_WRITE, f | MAP_FIXED, -1, 0);
		if (areas[i] == MAP_FAILED)
			zdtm_die("mmap %s: %s", names[i], strerror(errno));
		if (i < SEVERAL && madvise(areas[i], PAGES * PG, advice[i]))
			zdtm_die("madvise %s: %s (needs THP and KSM for hugepage and mergeable)", names[i], strerror(errno));
		for (int pg = 0; pg < PAGES; pg++)
			zdtm_fill(areas[i] + pg * PG, PG, seed(i, pg));
	}
	/* Read-only from the start: its data written before, through a
	 * writable mapping of the same pages would charge it; so an empty one. */
	if (mmap(areas[READONLY], PAGES * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
		zdtm_die("mmap read-only: %s", strerror(errno));
	if (madvise(areas[CHARGED], PAGES * PG, MADV_DONTNEED) || mprotect(areas[CHARGED], PAGES * PG, PROT_READ))
		zdtm_die("empty the charged area: %s", strerror(errno));
	if (madvise(areas[SEVERAL], PAGES * PG, MADV_DONTDUMP) || madvise(areas[SEVERAL], PAGES * PG, MADV_NOHUGEPAGE) ||
	    madvise(areas[SEVERAL], PAGES * PG, MADV_WIPEONFORK))
		zdtm_die("madvise several: %s", strerror(errno));
	if (madvise(areas[SPLIT] + 2 * PG, 4 * PG, MADV_DONTDUMP))
		zdtm_die("madvise split: %s", strerror(errno));
	if (mlock(areas[LOCKED], PAGES * PG))
		zdtm_die("mlock: %s", strerror(errno));
	if (syscall(SYS_mlock2, areas[ONFAULT], PAGES * PG, MLOCK_ONFAULT))
		zdtm_die("mlock2 MLOCK_ONFAULT: %s", strerror(errno));
	if (prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0))
		zdtm_die("PR_SET_MEMORY_MERGE: %s (needs KSM, Linux 6.4)", strerror(errno));
	if (madvise(areas[UNMERGED], PAGES * PG, MADV_UNMERGEABLE))
		zdtm_die("madvise unmergeable: %s", strerror(errno));
	for (int i = 0; i < NAREAS; i++)
		record(i, flags[i]);
	if (has_flag(flags[READONLY][0], "ac") || !has_flag(flags[CHARGED][0], "ac"))
		zdtm_die("the read-only areas are not charged as planned: %s, %s", flags[READONLY][0], flags[CHARGED][0]);
	if (has_flag(flags[UNMERGED][0], "mg") || !has_flag(flags[DONTDUMP][0], "mg"))
		zdtm_die("PR_SET_MEMORY_MERGE did not make the areas mergeable: %s", flags[DONTDUMP][0]);
	if (!has_flag(flags[DROPPABLE][0], "dp"))
		zdtm_die("the MAP_DROPPABLE area shows no dp flag: %s", flags[DROPPABLE][0]);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < NAREAS; i++) {
		record(i, now);
		for (int part = 0; part < (i == SPLIT ? 3 : 1); part++)
			zdtm_check(!strcmp(now[part], flags[i][part]), "area %s%s: VmFlags \"%s\", were \"%s\"", names[i],
				   part ? (part == 1 ? " (middle)" : " (end)") : "", now[part], flags[i][part]);
		for (int pg = 0; pg < PAGES; pg++) {
			char *p = areas[i] + pg * PG;
			int zero = 1;
			if (i == READONLY || i == CHARGED) {
				for (size_t k = 0; k < PG; k++)
					zdtm_check(!p[k], "area %s page %d is not zero", names[i], pg);
				continue;
			}
			if (i == DROPPABLE) {
				for (size_t k = 0; k < PG && zero; k++)
					zero = !p[k];
				if (zero)
					continue;
			}
			zdtm_check(zdtm_diff(p, PG, seed(i, pg)) < 0, "area %s page %d holds other data", names[i], pg);
		}
	}
	zdtm_check(prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 1, "PR_GET_MEMORY_MERGE: not every area is mergeable any more");
	child = fork();
	if (child == 0) {
		unsigned char v;
		/* DONTFORK: not mapped here (mincore fails with ENOMEM). */
		if (mincore(areas[DONTFORK], PG, &v) == 0 || errno != ENOMEM)
			_exit(3);
		for (int i = 0; i < NAREAS; i++) {
			if (i != WIPEONFORK && i != SEVERAL && i != DROPPABLE)
				continue;
			for (size_t k = 0; k < PAGES * PG; k++)
				if (areas[i][k])
					_exit(4 + i);
		}
		_exit(0);
	}
	zdtm_check(child > 0, "fork: %s", strerror(errno));
	zdtm_kid(child);
	st = zdtm_wait_kid(child, "exit");
	zdtm_check(WIFEXITED(st) && WEXITSTATUS(st) != 3, "a child forked now has the MADV_DONTFORK area");
	zdtm_check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a child forked now sees data in area %s (wiped on fork)",
		   WIFEXITED(st) && WEXITSTATUS(st) >= 4 ? names[WEXITSTATUS(st) - 4] : "?");
	zdtm_pass();
}
