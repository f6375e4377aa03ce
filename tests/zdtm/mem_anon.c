/*
 * mem_anon: private anonymous memory.
 *
 * State: an 8 MiB area with patterned, untouched, zeroed and partly written
 * pages; a PROT_NONE guard; a read-only area; an area split into rw-, r-x and
 * --- parts that all hold data; malloc'ed heap chunks (brk) with holes and a
 * big malloc (mmap); a 64 MiB area of which only 16 pages were ever touched
 * (MADV_NOHUGEPAGE); .data, .bss and stack arrays.
 * Verified: every byte, every protection, brk, the whole /proc/self/maps
 * (adjacent compatible areas merged, as CRIU's zdtm does), and that the
 * untouched part of the big area still uses no memory (smaps Rss).
 */
#include "zdtm.h"

#include <sys/mman.h>

#define PAGE 4096UL
#define MiB (1024UL * 1024)

#define A_SIZE (8 * MiB)
#define G_SIZE (1 * MiB)
#define R_SIZE (1 * MiB)
#define D_PAGES 16
#define BIG_SIZE (64 * MiB)
#define BIG_TOUCHED 16
#define CHUNKS 2000
#define CHUNK_SIZE 1000
#define BIGMALLOC (4 * MiB)

static char *area_a, *guard, *area_r, *area_d, *big, *bigmalloc;
static char *chunks[CHUNKS];
static void *brk_at_setup;
static uint64_t data_arr[4096] = { 1, 2, 3 };
static uint64_t bss_arr[8192];

static char maps_before[256 * 1024], maps_now[256 * 1024];
static char smaps[1024 * 1024];

enum { A_PATTERN, A_UNTOUCHED, A_ZEROED, A_PARTIAL };

static int a_class(unsigned long page)
{
	switch (page % 8) {
	case 3:
		return A_UNTOUCHED;
	case 6:
		return A_ZEROED;
	case 7:
		return A_PARTIAL;
	default:
		return A_PATTERN;
	}
}

static unsigned long big_page(int i)
{
	return (unsigned long)i * 1021 + 7; /* spread over the 16384 pages */
}

/* Which touched page pg of the big area is, or -1. */
static int big_index(unsigned long pg)
{
	for (int i = 0; i < BIG_TOUCHED; i++)
		if (big_page(i) == pg)
			return i;
	return -1;
}

static char *map(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		zdtm_die("mmap %zu: %s", len, strerror(errno));
	return p;
}

/* Grows the stack VMA now, so verification never extends it. */
static void __attribute__((noinline)) prefault_stack(void)
{
	volatile char buf[512 * 1024];
	for (size_t i = 0; i < sizeof(buf); i += PAGE)
		buf[i] = 1;
}

/* One /proc/self/maps line. */
struct vma {
	unsigned long start, end, off, ino;
	char perms[8], dev[16], path[512];
};

static struct vma vmas_before[512], vmas_now[512];

/* Parses maps text, merging adjacent areas that differ only in boundaries. */
static int parse_maps(const char *text, struct vma *v, int max)
{
	int n = 0;
	const char *p = text;

	while (*p) {
		struct vma cur;
		int used = 0;
		const char *nl = strchr(p, '\n');

		memset(&cur, 0, sizeof(cur));
		if (sscanf(p, "%lx-%lx %7s %lx %15s %lu %n", &cur.start, &cur.end, cur.perms,
			   &cur.off, cur.dev, &cur.ino, &used) < 6)
			zdtm_fail("cannot parse maps line: %.80s", p);
		if (used && p + used <= (nl ? nl : p + strlen(p)))
			snprintf(cur.path, sizeof(cur.path), "%.*s", (int)((nl ? nl : p + strlen(p)) - (p + used)), p + used);
		if (n > 0) {
			struct vma *prev = &v[n - 1];
			if (prev->end == cur.start && !strcmp(prev->perms, cur.perms) &&
			    !strcmp(prev->dev, cur.dev) && prev->ino == cur.ino &&
			    !strcmp(prev->path, cur.path) &&
			    (cur.ino == 0 || prev->off + (prev->end - prev->start) == cur.off)) {
				prev->end = cur.end;
				goto next;
			}
		}
		if (n == max)
			zdtm_fail("more than %d areas", max);
		v[n++] = cur;
next:
		if (!nl)
			break;
		p = nl + 1;
	}
	return n;
}

static void snapshot_maps(char *buf, size_t size)
{
	if (zdtm_read_file("/proc/self/maps", buf, size) <= 0)
		zdtm_die("read /proc/self/maps: %s", strerror(errno));
}

static void fmt_vma(char *out, size_t size, const struct vma *v)
{
	snprintf(out, size, "%lx-%lx %s %lx %s %lu %s", v->start, v->end, v->perms, v->off,
		 v->dev, v->ino, v->path);
}

static void check_maps(void)
{
	int nb, nn, i;
	char a[700], b[700];

	snapshot_maps(maps_now, sizeof(maps_now));
	nb = parse_maps(maps_before, vmas_before, 512);
	nn = parse_maps(maps_now, vmas_now, 512);
	for (i = 0; i < nb && i < nn; i++) {
		struct vma *x = &vmas_before[i], *y = &vmas_now[i];
		if (x->start != y->start || x->end != y->end || strcmp(x->perms, y->perms) ||
		    x->off != y->off || strcmp(x->dev, y->dev) || x->ino != y->ino ||
		    strcmp(x->path, y->path)) {
			fmt_vma(a, sizeof(a), x);
			fmt_vma(b, sizeof(b), y);
			zdtm_fail("maps differ at area %d: was [%s] now [%s]", i, a, b);
		}
	}
	if (nb != nn) {
		fmt_vma(a, sizeof(a), i < nb ? &vmas_before[i] : &vmas_now[i]);
		zdtm_fail("maps had %d areas, now %d; first extra/missing: [%s]", nb, nn, a);
	}
}

/* Permissions of the (merged) area holding addr. */
static const char *perms_of(const void *addr)
{
	static char perms[8];
	int n = parse_maps(maps_now, vmas_now, 512);

	for (int i = 0; i < n; i++)
		if (vmas_now[i].start <= (unsigned long)addr && (unsigned long)addr < vmas_now[i].end) {
			memcpy(perms, vmas_now[i].perms, sizeof(perms));
			return perms;
		}
	return "none";
}

/* Checks the big area: its VmFlags carry nh, and Rss is only its touched pages. */
static void check_big_rss(void)
{
	char line[128], *p;
	unsigned long start, end, rss_kb = ~0UL;

	if (zdtm_read_file("/proc/self/smaps", smaps, sizeof(smaps)) <= 0)
		zdtm_fail("read /proc/self/smaps: %s", strerror(errno));
	for (p = smaps; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (sscanf(p, "%lx-%lx ", &start, &end) != 2 || start != (unsigned long)big)
			continue;
		zdtm_check(end == (unsigned long)big + BIG_SIZE,
			   "big area %lx-%lx is not exactly its own area", start, end);
		zdtm_check(zdtm_field(p, "Rss", line, sizeof(line)), "no Rss for the big area");
		rss_kb = strtoul(line, NULL, 10);
		zdtm_check(zdtm_field(p, "VmFlags", line, sizeof(line)), "no VmFlags for the big area");
		zdtm_check(strstr(line, " nh") || !strncmp(line, "nh", 2),
			   "big area lost MADV_NOHUGEPAGE: VmFlags %s", line);
		break;
	}
	zdtm_check(rss_kb != ~0UL, "big area at %p not found in smaps", big);
	zdtm_check(rss_kb <= BIG_TOUCHED * PAGE / 1024,
		   "big area uses %lu KiB, only %lu KiB were ever touched (untouched pages populated)",
		   rss_kb, BIG_TOUCHED * PAGE / 1024);
}

static void setup(void)
{
	unsigned long pg;

	area_a = map(A_SIZE, PROT_READ | PROT_WRITE);
	for (pg = 0; pg < A_SIZE / PAGE; pg++) {
		char *p = area_a + pg * PAGE;
		switch (a_class(pg)) {
		case A_PATTERN:
			zdtm_fill(p, PAGE, 0xa000000 + pg * 512);
			break;
		case A_ZEROED:
			zdtm_fill(p, PAGE, 0xa000000 + pg * 512);
			memset(p, 0, PAGE);
			break;
		case A_PARTIAL:
			*(uint64_t *)p = zdtm_mix(pg);
			break;
		}
	}

	guard = map(G_SIZE, PROT_NONE);

	area_r = map(R_SIZE, PROT_READ | PROT_WRITE);
	zdtm_fill(area_r, R_SIZE, 0xb000000);
	if (mprotect(area_r, R_SIZE, PROT_READ))
		zdtm_die("mprotect r: %s", strerror(errno));

	area_d = map(D_PAGES * PAGE, PROT_READ | PROT_WRITE);
	zdtm_fill(area_d, D_PAGES * PAGE, 0xd000000);
	if (mprotect(area_d + 4 * PAGE, 4 * PAGE, PROT_READ | PROT_EXEC) ||
	    mprotect(area_d + 12 * PAGE, 4 * PAGE, PROT_NONE))
		zdtm_die("mprotect d: %s", strerror(errno));

	for (int i = 0; i < CHUNKS; i++) {
		chunks[i] = malloc(CHUNK_SIZE);
		if (!chunks[i])
			zdtm_die("malloc");
		zdtm_fill(chunks[i], CHUNK_SIZE - CHUNK_SIZE % 8, 0xc000000 + i * 1000);
	}
	for (int i = 0; i < CHUNKS; i += 3) {
		free(chunks[i]);
		chunks[i] = NULL;
	}
	bigmalloc = malloc(BIGMALLOC);
	if (!bigmalloc)
		zdtm_die("malloc big");
	zdtm_fill(bigmalloc, BIGMALLOC, 0xe000000);

	big = map(BIG_SIZE, PROT_READ | PROT_WRITE);
	if (madvise(big, BIG_SIZE, MADV_NOHUGEPAGE))
		zdtm_die("madvise: %s", strerror(errno));
	for (int i = 0; i < BIG_TOUCHED; i++)
		zdtm_fill(big + big_page(i) * PAGE, PAGE, 0xf000000 + i * 512);

	zdtm_fill(data_arr, sizeof(data_arr), 0x1000);
	zdtm_fill(bss_arr, sizeof(bss_arr), 0x2000);
	brk_at_setup = sbrk(0);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* a page lost its data */
		memset(area_a + 9 * PAGE, 0, PAGE);
		break;
	case 2: /* an untouched page got data */
		area_a[3 * PAGE + 100] = 1;
		break;
	case 3: /* a protection was not restored */
		mprotect(area_r, R_SIZE, PROT_READ | PROT_WRITE);
		break;
	case 4: /* untouched pages were populated */
		for (unsigned long pg = 0; pg < 1000; pg++)
			if (big_index(pg) < 0)
				((volatile char *)big)[pg * PAGE] = 0;
		break;
	case 5: /* brk moved */
		sbrk(PAGE);
		break;
	case 6: /* a byte of the stack array changed */
		bss_arr[77] ^= 1;
		break;
	}
}

static void verify(const uint64_t *stack_arr, size_t stack_len)
{
	unsigned long pg;
	long d;

	check_maps();
	zdtm_check(!strcmp(perms_of(area_a), "rw-p"), "area a perms %s", perms_of(area_a));
	zdtm_check(!strcmp(perms_of(guard), "---p"), "guard perms %s", perms_of(guard));
	zdtm_check(!strcmp(perms_of(area_r), "r--p"), "read-only area perms %s", perms_of(area_r));
	zdtm_check(!strcmp(perms_of(area_d), "rw-p"), "area d[0] perms %s", perms_of(area_d));
	zdtm_check(!strcmp(perms_of(area_d + 4 * PAGE), "r-xp"), "area d[4] perms %s",
		   perms_of(area_d + 4 * PAGE));
	zdtm_check(!strcmp(perms_of(area_d + 12 * PAGE), "---p"), "area d[12] perms %s",
		   perms_of(area_d + 12 * PAGE));
	zdtm_check(sbrk(0) == brk_at_setup, "brk moved from %p to %p", brk_at_setup, sbrk(0));
	check_big_rss();

	for (pg = 0; pg < A_SIZE / PAGE; pg++) {
		char *p = area_a + pg * PAGE;
		switch (a_class(pg)) {
		case A_PATTERN:
			d = zdtm_diff(p, PAGE, 0xa000000 + pg * 512);
			zdtm_check(d < 0, "area a page %lu word %ld differs", pg, d);
			break;
		case A_PARTIAL:
			zdtm_check(*(uint64_t *)p == zdtm_mix(pg), "area a page %lu first word differs", pg);
			for (unsigned long i = 8; i < PAGE; i++)
				zdtm_check(!p[i], "area a page %lu byte %lu not zero", pg, i);
			break;
		default:
			for (unsigned long i = 0; i < PAGE; i++)
				zdtm_check(!p[i], "area a page %lu (%s) byte %lu not zero", pg,
					   a_class(pg) == A_UNTOUCHED ? "untouched" : "zeroed", i);
		}
	}
	d = zdtm_diff(area_r, R_SIZE, 0xb000000);
	zdtm_check(d < 0, "read-only area word %ld differs", d);
	if (mprotect(area_d, D_PAGES * PAGE, PROT_READ))
		zdtm_fail("mprotect d for reading: %s", strerror(errno));
	d = zdtm_diff(area_d, D_PAGES * PAGE, 0xd000000);
	zdtm_check(d < 0, "area d word %ld (page %ld) differs", d, d * 8 / (long)PAGE);
	for (int i = 0; i < CHUNKS; i++) {
		if (!chunks[i])
			continue;
		d = zdtm_diff(chunks[i], CHUNK_SIZE - CHUNK_SIZE % 8, 0xc000000 + i * 1000);
		zdtm_check(d < 0, "heap chunk %d at %p word %ld differs", i, chunks[i], d);
	}
	d = zdtm_diff(bigmalloc, BIGMALLOC, 0xe000000);
	zdtm_check(d < 0, "big malloc word %ld differs", d);
	for (pg = 0; pg < BIG_SIZE / PAGE; pg++) {
		const char *p = big + pg * PAGE;
		int touched = big_index(pg);
		if (touched >= 0) {
			d = zdtm_diff(p, PAGE, 0xf000000 + touched * 512);
			zdtm_check(d < 0, "big area page %lu word %ld differs", pg, d);
		} else {
			const uint64_t *w = (const uint64_t *)p;
			for (unsigned long i = 0; i < PAGE / 8; i++)
				zdtm_check(!w[i], "big area untouched page %lu not zero", pg);
		}
	}
	d = zdtm_diff(data_arr, sizeof(data_arr), 0x1000);
	zdtm_check(d < 0, ".data word %ld differs", d);
	d = zdtm_diff(bss_arr, sizeof(bss_arr), 0x2000);
	zdtm_check(d < 0, ".bss word %ld differs", d);
	d = zdtm_diff(stack_arr, stack_len, 0x3000);
	zdtm_check(d < 0, "stack word %ld differs", d);
}

int main(void)
{
	uint64_t stack_arr[2048];

	zdtm_init();
	prefault_stack();
	setup();
	zdtm_fill(stack_arr, sizeof(stack_arr), 0x3000);
	snapshot_maps(maps_before, sizeof(maps_before));
	zdtm_ready();
	zdtm_wait();
	sabotage();
	verify(stack_arr, sizeof(stack_arr));
	zdtm_pass();
}
