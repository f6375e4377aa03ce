/*
 * dirtier: the partition program of `lpm bench migrate`.
 *
 *   dirtier SIZE_MIB RATE_MIB_PER_S
 *
 * Maps SIZE MiB of anonymous memory, writes every page once, prints
 * "ready ..." and then rewrites RATE MiB of randomly chosen pages per
 * second, paced in 2 ms steps so the writes spread evenly over time and
 * over the whole area (what pre-copy has to chase).
 *
 * Every page carries a self-describing pattern: word 0 is the page's
 * index, word 1 its generation (how often it was written), the other 510
 * words follow from (index, generation). A separate table, itself in
 * migrated memory, holds the generation each page must have. On SIGUSR1
 * the program checks every page against its table entry and the pattern
 * and prints "verify N OK ..." or "verify N BAD ..." (N counts the checks
 * from 1): a torn, stale, zeroed or misplaced page after a migration
 * shows up as BAD, naming the first such page. Writing resumes after the
 * check. SIGTERM ends it at once (it is pid 1 of its partition, which
 * would otherwise ignore the signal).
 *
 * When the program falls behind (frozen, or its CPU throttled) it does
 * not catch up later in a burst: at most 10 ms of backlog is kept, so a
 * throttle really lowers the rate pre-copy sees.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define STEP_NS 2000000L
#define GOLDEN 0x9E3779B97F4A7C15ULL

static volatile sig_atomic_t verify_requested;

static void on_usr1(int sig)
{
	(void)sig;
	verify_requested = 1;
}

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

/* splitmix64's finalizer. */
static uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xBF58476D1CE4E5B9ULL;
	x ^= x >> 27;
	x *= 0x94D049BB133111EBULL;
	x ^= x >> 31;
	return x;
}

static uint64_t seed_of(uint64_t page, uint64_t gen)
{
	return mix(page * GOLDEN ^ (gen << 40) ^ 0x5A5A5A5A5A5A5A5AULL) | 1;
}

static void fill(uint64_t *p, uint64_t page, uint64_t gen)
{
	uint64_t s = seed_of(page, gen);
	p[0] = page;
	p[1] = gen;
	for (uint64_t k = 2; k < WORDS; k++)
		p[k] = s + k * GOLDEN;
}

/* 0 when the page holds generation `gen` of page `page`, else the index
 * of the first wrong word plus one. */
static uint64_t check(const uint64_t *p, uint64_t page, uint64_t gen)
{
	if (p[0] != page)
		return 1;
	if (p[1] != gen)
		return 2;
	uint64_t s = seed_of(page, gen);
	for (uint64_t k = 2; k < WORDS; k++)
		if (p[k] != s + k * GOLDEN)
			return k + 1;
	return 0;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t next_random(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1DULL;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: dirtier SIZE_MIB RATE_MIB_PER_S\n");
		return 2;
	}
	uint64_t mib = strtoull(argv[1], NULL, 10);
	uint64_t rate = strtoull(argv[2], NULL, 10);
	if (mib == 0) {
		fprintf(stderr, "dirtier: size must be at least 1 MiB\n");
		return 2;
	}
	uint64_t npages = mib * (1 << 20) / PAGE;
	uint8_t *area = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t *gens = mmap(NULL, npages * sizeof(uint32_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED || gens == MAP_FAILED) {
		fprintf(stderr, "dirtier: mmap of %llu MiB: %s\n", (unsigned long long)mib, strerror(errno));
		return 1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	rng ^= (uint64_t)getpid() * GOLDEN ^ (uint64_t)(now_s() * 1e9);
	for (uint64_t i = 0; i < npages; i++) {
		gens[i] = 1;
		fill((uint64_t *)(area + i * PAGE), i, 1);
	}
	printf("ready size=%llu MiB rate=%llu MiB/s pages=%llu base=%p\n", (unsigned long long)mib, (unsigned long long)rate,
	       (unsigned long long)npages, (void *)area);
	fflush(stdout);

	double per_s = (double)rate * (1 << 20) / PAGE;
	double backlog = per_s * 0.010;
	double t0 = now_s();
	double done = 0;
	uint64_t writes = 0, checks = 0;
	for (;;) {
		if (verify_requested) {
			verify_requested = 0;
			checks++;
			uint64_t bad = 0, first = 0, word = 0;
			double t = now_s();
			for (uint64_t i = 0; i < npages; i++) {
				uint64_t w = check((const uint64_t *)(area + i * PAGE), i, gens[i]);
				if (w && bad++ == 0) {
					first = i;
					word = w - 1;
				}
			}
			if (bad)
				printf("verify %llu BAD %llu of %llu pages wrong, first page %llu word %llu (writes %llu)\n",
				       (unsigned long long)checks, (unsigned long long)bad, (unsigned long long)npages,
				       (unsigned long long)first, (unsigned long long)word, (unsigned long long)writes);
			else
				printf("verify %llu OK %llu pages in %.0f ms (writes %llu)\n", (unsigned long long)checks,
				       (unsigned long long)npages, (now_s() - t) * 1e3, (unsigned long long)writes);
			fflush(stdout);
			/* The check took time: start pacing afresh. */
			t0 = now_s();
			done = 0;
		}
		double target = (now_s() - t0) * per_s;
		if (target - done > backlog)
			done = target - backlog;
		while (done + 1 <= target) {
			uint64_t i = next_random() % npages;
			gens[i]++;
			fill((uint64_t *)(area + i * PAGE), i, gens[i]);
			done += 1;
			writes++;
		}
		struct timespec step = { 0, rate ? STEP_NS : 50 * STEP_NS };
		nanosleep(&step, NULL);
	}
}
