/*
 * mem_cow: pages shared copy-on-write between processes since fork.
 *
 * State: four processes, P (the root), its children C1 and C2 and C1's
 * child G, all holding a private anonymous area A of 64 pages and a private
 * mapping F of a file (16 pages) inherited from P. Timeline:
 *   P fills A[0..39] and F[0..7] (copies on write of the file), reads
 *   A[40..47] (the zero page), leaves A[48..63] and F[8..15] untouched;
 *   P forks C1, C1 forks G (everything shared by the three);
 *   C1 writes A[1], F[3], A[48]; G writes A[4];
 *   P writes A[2], F[2], then forks C2; C2 writes A[3];
 *   P writes A[5].
 * So every page is shared by some set of the processes and private to the
 * others, several sets per page (A[2]: {C1, G} share the old page, {P, C2}
 * the new one; A[5]: {C1, G, C2} share the page P replaced).
 * Verified in every process: the content of every page of A and F; from
 * /proc/self/pagemap, which pages are present, and that two processes
 * map the same physical page (PFN) exactly where they shared it at ready
 * (pages written since are private), and the zero page where they had
 * it: a restore that copies every page into every process would double
 * the memory and fail here. The file's own pages may be mapped or not,
 * but never copied.
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/prctl.h>

#define PG 4096UL
#define A_PAGES 64
#define F_PAGES 16
#define NPROC 4 /* P, C1, G, C2 */

enum { P, C1, G, C2 };
static const char *names[NPROC] = { "P", "C1", "G", "C2" };

/*
 * Per page, the class of each process (P, C1, G, C2): processes with the
 * same letter map the same physical page, different letters different
 * ones; '-' not present; '0' the shared zero page; 'f' the file's own
 * page (page cache): the same physical page wherever it is mapped, not
 * necessarily mapped (a restore maps the file and the page comes on the
 * first touch).
 */
static char a_class[A_PAGES][NPROC + 1], f_class[F_PAGES][NPROC + 1];

struct slot {
	uint64_t a_pfn[A_PAGES], f_pfn[F_PAGES];
	int status;
	char msg[400];
	volatile int done;
};

struct ctl {
	volatile int ready[NPROC];
	volatile int go;
	struct slot slot[NPROC];
};

static struct ctl *ctl;
static char *area, *fmap;
static int ffd;
static pid_t kids[NPROC];

static uint64_t a_seed(int page, int who) { return 0xc0c0000ULL + page * 512 + who * 0x100000ULL; }
static uint64_t f_seed(int page, int who) { return 0xf11e000ULL + page * 512 + who * 0x100000ULL; }

static void expect(char (*cls)[NPROC + 1], int page, const char *c) { memcpy(cls[page], c, NPROC + 1); }

static void classes(void)
{
	for (int i = 0; i < A_PAGES; i++)
		expect(a_class, i, i < 40 ? "aaaa" : i < 48 ? "0000" : "----");
	expect(a_class, 1, "abaa"); /* C1 wrote */
	expect(a_class, 2, "abba"); /* P wrote before forking C2 */
	expect(a_class, 3, "aaab"); /* C2 wrote */
	expect(a_class, 4, "aaba"); /* G wrote */
	expect(a_class, 5, "abbb"); /* P wrote after forking C2 */
	expect(a_class, 48, "-a--"); /* C1 wrote an untouched page */
	for (int i = 0; i < F_PAGES; i++)
		expect(f_class, i, i < 8 ? "aaaa" : "ffff"); /* copies on write, or the file's page */
	expect(f_class, 2, "abba");
	expect(f_class, 3, "abaa");
}

/* What page `page` of A holds in process `who`. */
static uint64_t a_want(int page, int who)
{
	if (page >= 40)
		return page == 48 && who == C1 ? a_seed(page, C1) : 0;
	if (page == 1 && who == C1)
		return a_seed(page, C1);
	if (page == 2 && (who == P || who == C2))
		return a_seed(page, P);
	if (page == 3 && who == C2)
		return a_seed(page, C2);
	if (page == 4 && who == G)
		return a_seed(page, G);
	if (page == 5 && who == P)
		return a_seed(page, P);
	return a_seed(page, 9);
}

static uint64_t f_want(int page, int who)
{
	if (page == 2 && (who == P || who == C2))
		return f_seed(page, P);
	if (page == 3 && who == C1)
		return f_seed(page, C1);
	return f_seed(page, 9);
}

static int zero_page(const char *p)
{
	for (size_t i = 0; i < PG; i++)
		if (p[i])
			return 0;
	return 1;
}

static int pagemap(uint64_t *out, const char *base, int n, char *msg, size_t size)
{
	if (zdtm_pagemap(out, base, n))
		return snprintf(msg, size, "read pagemap: %s", strerror(errno)), -1;
	for (int i = 0; i < n; i++)
		out[i] = out[i] >> 63 ? out[i] & ((1ULL << 55) - 1) : 0;
	return 0;
}

/* Records PFNs into this process's slot (first: reading an untouched page
 * would map the zero page), then checks the content of every page that
 * is to be present. */
static void check_self(int who)
{
	struct slot *s = &ctl->slot[who];
	long d;

	s->status = 1;
	if (pagemap(s->a_pfn, area, A_PAGES, s->msg, sizeof(s->msg)) || pagemap(s->f_pfn, fmap, F_PAGES, s->msg, sizeof(s->msg)))
		return;
	for (int i = 0; i < A_PAGES; i++) {
		uint64_t want = a_want(i, who);
		if (a_class[i][who] == '-')
			continue;
		if (!want ? !zero_page(area + i * PG) : (d = zdtm_diff(area + i * PG, PG, want)) >= 0) {
			snprintf(s->msg, sizeof(s->msg), "%s: page %d of the anonymous area holds other data", names[who], i);
			return;
		}
	}
	for (int i = 0; i < F_PAGES; i++) {
		if ((d = zdtm_diff(fmap + i * PG, PG, f_want(i, who))) >= 0) {
			snprintf(s->msg, sizeof(s->msg), "%s: page %d of the private file mapping, word %ld, holds other data", names[who], i, d);
			return;
		}
	}
	s->status = 0;
}

/* Children: a check of themselves each time the root raises `go`. */
static void kid_loop(int who)
{
	int seen = 0;

	ctl->ready[who] = 1;
	for (;;) {
		while (ctl->go == seen)
			zdtm_sleep_ms(2);
		seen = ctl->go;
		check_self(who);
		ctl->slot[who].done = seen;
	}
}

static void wait_ready(int who)
{
	long long end = zdtm_now_ms() + 10000;
	while (!ctl->ready[who]) {
		if (zdtm_now_ms() > end)
			zdtm_die("%s not ready", names[who]);
		zdtm_sleep_ms(1);
	}
}

/* Whether the PFNs of every process match the classes of a page; else why not. */
static const char *compare(const char *what, int page, const char *cls, uint64_t pfn[NPROC], char *msg, size_t size)
{
	for (int i = 0; i < NPROC; i++) {
		if (cls[i] == 'f') {
			for (int j = 0; j < NPROC; j++)
				if (pfn[i] && pfn[j] && pfn[i] != pfn[j])
					return snprintf(msg, size, "%s page %d: %s and %s map different copies of the file's page", what, page,
							names[i], names[j]),
					       msg;
			continue;
		}
		if (cls[i] == '-') {
			if (pfn[i])
				return snprintf(msg, size, "%s page %d: present in %s, was not", what, page, names[i]), msg;
			continue;
		}
		if (!pfn[i])
			return snprintf(msg, size, "%s page %d: not present in %s", what, page, names[i]), msg;
		for (int j = i + 1; j < NPROC; j++) {
			if (cls[j] == '-' || (cls[i] == cls[j]) == (pfn[i] == pfn[j]))
				continue;
			return snprintf(msg, size, "%s page %d: %s and %s map %s physical page (pfn %#llx, %#llx), expected %s (classes %s)",
					what, page, names[i], names[j], pfn[i] == pfn[j] ? "the same" : "different",
					(unsigned long long)pfn[i], (unsigned long long)pfn[j], cls[i] == cls[j] ? "shared" : "private", cls),
			       msg;
		}
	}
	return NULL;
}

/* One round: every process checks its content and reads its PFNs; then the
 * sharing is compared. Returns why it failed, or NULL. */
static const char *round_check(char *msg, size_t size)
{
	int round = ++ctl->go;
	const char *err;

	check_self(P);
	ctl->slot[P].done = round;
	for (int w = C1; w < NPROC; w++) {
		long long end = zdtm_now_ms() + 10000;
		while (ctl->slot[w].done != round) {
			if (zdtm_now_ms() > end)
				return snprintf(msg, size, "%s did not check itself within 10 s", names[w]), msg;
			zdtm_sleep_ms(1);
		}
	}
	for (int w = 0; w < NPROC; w++)
		if (ctl->slot[w].status)
			return snprintf(msg, size, "%s", ctl->slot[w].msg), msg;
	for (int i = 0; i < A_PAGES; i++) {
		uint64_t pfn[NPROC];
		for (int w = 0; w < NPROC; w++)
			pfn[w] = ctl->slot[w].a_pfn[i];
		if ((err = compare("anonymous area", i, a_class[i], pfn, msg, size)))
			return err;
	}
	for (int i = 0; i < F_PAGES; i++) {
		uint64_t pfn[NPROC];
		for (int w = 0; w < NPROC; w++)
			pfn[w] = ctl->slot[w].f_pfn[i];
		if ((err = compare("private file mapping", i, f_class[i], pfn, msg, size)))
			return err;
	}
	return NULL;
}

static void sabotage(void)
{
	static char page[PG];

	switch (zdtm_sabotage) {
	case 1: /* same content, own copy: sharing broken */
		memcpy(page, area + 7 * PG, PG);
		memcpy(area + 7 * PG, page, PG);
		break;
	case 2: /* a shared page changed */
		area[9 * PG + 3] ^= 1;
		break;
	case 3: /* a copy on write of the file mapping dropped: the file's page again */
		madvise(fmap + 5 * PG, PG, MADV_DONTNEED);
		break;
	case 4: /* an untouched page populated */
		(void)*(volatile char *)(area + 60 * PG);
		*(volatile char *)(area + 60 * PG) = 0;
		break;
	}
}

int main(void)
{
	char path[4096], msg[512];
	static char page[PG];
	const char *err;

	zdtm_init();
	classes();
	ctl = mmap(NULL, sizeof(*ctl), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	area = mmap(NULL, A_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	zdtm_path(path, sizeof(path), "mem_cow.file");
	ffd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (ctl == MAP_FAILED || area == MAP_FAILED || ffd < 0)
		zdtm_die("mmap/open: %s", strerror(errno));
	for (int i = 0; i < F_PAGES; i++) {
		zdtm_fill(page, PG, f_seed(i, 9));
		if (pwrite(ffd, page, PG, i * PG) != (ssize_t)PG)
			zdtm_die("write %s: %s", path, strerror(errno));
	}
	fmap = mmap(NULL, F_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, ffd, 0);
	if (fmap == MAP_FAILED)
		zdtm_die("mmap file: %s", strerror(errno));
	for (int i = 0; i < 40; i++)
		zdtm_fill(area + i * PG, PG, a_seed(i, 9));
	for (int i = 40; i < 48; i++)
		(void)*(volatile char *)(area + i * PG);
	/* The file's pages: read in, then copied on write for 0..7. */
	for (int i = 0; i < F_PAGES; i++)
		(void)*(volatile char *)(fmap + i * PG);
	for (int i = 0; i < 8; i++)
		zdtm_fill(fmap + i * PG, PG, f_seed(i, 9));

	kids[C1] = fork();
	if (kids[C1] < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (kids[C1] == 0) {
		kids[G] = fork();
		if (kids[G] < 0)
			zdtm_die("fork: %s", strerror(errno));
		if (kids[G] == 0) {
			/* It goes with C1 (the runner kills the root's children). */
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			/* Wait until C1 has written, then write. */
			while (!ctl->ready[C1])
				zdtm_sleep_ms(1);
			zdtm_fill(area + 4 * PG, PG, a_seed(4, G));
			kid_loop(G);
		}
		zdtm_fill(area + 1 * PG, PG, a_seed(1, C1));
		zdtm_fill(fmap + 3 * PG, PG, f_seed(3, C1));
		zdtm_fill(area + 48 * PG, PG, a_seed(48, C1));
		kid_loop(C1);
	}
	zdtm_kid(kids[C1]);
	wait_ready(C1);
	wait_ready(G);
	zdtm_fill(area + 2 * PG, PG, a_seed(2, P));
	zdtm_fill(fmap + 2 * PG, PG, f_seed(2, P));
	kids[C2] = fork();
	if (kids[C2] < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (kids[C2] == 0) {
		zdtm_fill(area + 3 * PG, PG, a_seed(3, C2));
		kid_loop(C2);
	}
	zdtm_kid(kids[C2]);
	wait_ready(C2);
	zdtm_fill(area + 5 * PG, PG, a_seed(5, P));
	if ((err = round_check(msg, sizeof(msg))))
		zdtm_die("the sharing is not as planned before ready: %s", err);
	zdtm_ready();
	zdtm_wait();
	sabotage();
	if ((err = round_check(msg, sizeof(msg))))
		zdtm_fail("%s", err);
	zdtm_pass();
}
