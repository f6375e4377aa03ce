/*
 * mem_cow_wide: many pages shared copy-on-write by a parent and four
 * children, a checkpoint's reading of them racing the kernel's page
 * migration (the test cow_kept_while_pages_migrate compacts memory all
 * the while).
 *
 * State: P fills a private anonymous area of 8192 pages (32 MiB), forks
 * C1..C4; child k writes the pages whose number is k modulo 5, P those
 * that are 0 modulo 5 after the last fork. So each page is shared by P
 * and three children, or by all four children (P's multiples of 5).
 * Verified in every process: the content of every page; from
 * /proc/self/pagemap, that two processes map the same physical page
 * exactly where they share it (a restore that copied the pages would
 * give each its own; one that grouped a moved page wrongly would share
 * it with the wrong ones).
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/prctl.h>

#define PG 4096UL
#define PAGES 8192
#define NPROC 5 /* P, C1..C4 */

struct slot {
	uint64_t pfn[PAGES];
	int status;
	char msg[300];
	volatile int done;
};

struct ctl {
	volatile int ready[NPROC];
	volatile int go;
	struct slot slot[NPROC];
};

static struct ctl *ctl;
static char *area;

static uint64_t seed(int page, int who) { return 0x5eed0000ULL + page * 64 + who * 0x1000000ULL; }

/* Who wrote page `page` last as process `who` sees it: its own write, or
 * the original content (9). */
static int writer(int page, int who)
{
	int k = page % 5;
	if (who == 0)
		return k == 0 ? 0 : 9;
	return k == who ? who : 9;
}

static void check_self(int who)
{
	struct slot *s = &ctl->slot[who];
	long d;

	s->status = 1;
	if (zdtm_pagemap(s->pfn, area, PAGES)) {
		snprintf(s->msg, sizeof(s->msg), "%d: read pagemap: %s", who, strerror(errno));
		return;
	}
	for (int i = 0; i < PAGES; i++) {
		s->pfn[i] = s->pfn[i] >> 63 ? s->pfn[i] & ((1ULL << 55) - 1) : 0;
		if ((d = zdtm_diff(area + i * PG, PG, seed(i, writer(i, who)))) >= 0) {
			snprintf(s->msg, sizeof(s->msg), "process %d: page %d, word %ld, holds other data", who, i, d);
			return;
		}
	}
	s->status = 0;
}

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

static const char *round_check(char *msg, size_t size)
{
	int round = ++ctl->go;

	check_self(0);
	ctl->slot[0].done = round;
	for (int w = 1; w < NPROC; w++) {
		long long end = zdtm_now_ms() + 20000;
		while (ctl->slot[w].done != round) {
			if (zdtm_now_ms() > end)
				return snprintf(msg, size, "child %d did not check itself within 20 s", w), msg;
			zdtm_sleep_ms(1);
		}
	}
	for (int w = 0; w < NPROC; w++)
		if (ctl->slot[w].status)
			return snprintf(msg, size, "%s", ctl->slot[w].msg), msg;
	for (int i = 0; i < PAGES; i++)
		for (int a = 0; a < NPROC; a++)
			for (int b = a + 1; b < NPROC; b++) {
				uint64_t pa = ctl->slot[a].pfn[i], pb = ctl->slot[b].pfn[i];
				int shared = writer(i, a) == 9 && writer(i, b) == 9;
				if (!pa || !pb)
					return snprintf(msg, size, "page %d not present in process %d", i, pa ? b : a), msg;
				if ((pa == pb) != shared)
					return snprintf(msg, size, "page %d: processes %d and %d map %s physical page, expected %s", i, a, b,
							pa == pb ? "the same" : "different", shared ? "shared" : "private"),
					       msg;
			}
	return NULL;
}

/* The kernel moves pages (compaction) while the processes read their
 * frames one after another: a shared page moved between two reads looks
 * like two. Sharing that holds shows in a round without a move; one that
 * is broken never does. Rounds for up to 5 s. */
static const char *settled_check(char *msg, size_t size)
{
	long long end = zdtm_now_ms() + 5000;
	const char *err;

	while ((err = round_check(msg, size)) && zdtm_now_ms() < end)
		zdtm_sleep_ms(10);
	return err;
}

int main(void)
{
	char msg[400];
	const char *err;
	pid_t kid;

	zdtm_init();
	ctl = mmap(NULL, sizeof(*ctl), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	area = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ctl == MAP_FAILED || area == MAP_FAILED)
		zdtm_die("mmap: %s", strerror(errno));
	/* 4 KiB pages: a huge page is split by the first child's write, and
	 * what the parent keeps shared is then counted page by page anyway. */
	madvise(area, PAGES * PG, MADV_NOHUGEPAGE);
	for (int i = 0; i < PAGES; i++)
		zdtm_fill(area + i * PG, PG, seed(i, 9));
	for (int w = 1; w < NPROC; w++) {
		kid = fork();
		if (kid < 0)
			zdtm_die("fork: %s", strerror(errno));
		if (kid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			for (int i = w; i < PAGES; i += 5)
				zdtm_fill(area + i * PG, PG, seed(i, w));
			kid_loop(w);
		}
		zdtm_kid(kid);
	}
	for (int w = 1; w < NPROC; w++) {
		long long end = zdtm_now_ms() + 20000;
		while (!ctl->ready[w]) {
			if (zdtm_now_ms() > end)
				zdtm_die("child %d not ready", w);
			zdtm_sleep_ms(1);
		}
	}
	for (int i = 0; i < PAGES; i += 5)
		zdtm_fill(area + i * PG, PG, seed(i, 0));
	if ((err = settled_check(msg, sizeof(msg))))
		zdtm_die("the sharing is not as planned before ready: %s", err);
	zdtm_ready();
	zdtm_wait();
	switch (zdtm_sabotage) {
	case 1: { /* same content, own copy: sharing broken */
		static char page[PG];
		memcpy(page, area + 7 * PG, PG);
		memcpy(area + 7 * PG, page, PG);
		break;
	}
	case 2: /* a shared page changed */
		area[11 * PG + 8] ^= 1;
		break;
	}
	if ((err = settled_check(msg, sizeof(msg))))
		zdtm_fail("%s", err);
	zdtm_pass();
}
