/*
 * mem_hugetlb: hugetlbfs memory, anonymous MAP_HUGETLB, in 2 MiB pages.
 *
 * State: a private area of three huge pages: page 0 written, page 1 only
 * read (allocated, all zero), page 2 never touched (not allocated); a
 * shared area of two huge pages shared by the root and a forked child:
 * page 0 written by the parent, page 1 by the child. The child inherits
 * the private area copy-on-write and writes its own page 0.
 * Verified, by each process: the content of every page it may read; that
 * exactly the huge pages that were allocated still are (its page table
 * for the private area, through /proc/self/pagemap: pages 0 and 1, not
 * 2; the shared object's block count: two pages); that smaps shows both
 * areas as hugetlbfs (VmFlags ht) in pages of 2048 kB; and after the
 * restore, that the shared area is still one object shared by both (a
 * ping/pong through it).
 * Needs 2 MiB huge pages free: the runners reserve them (Need::HugePages).
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define HUGE (2UL << 20)
#define PAGE 4096UL
#define P_PAGES 3
#define S_PAGES 2

#define MAGIC_PARENT 0x5041524e54ULL
#define MAGIC_CHILD 0x4348494c44ULL

/* At the start of shared page 0, before its data. */
struct ctl {
	uint64_t ping, pong, parent_val, child_val;
	int child_status;
	char child_msg[512];
};

/* The data of shared page 0 starts after the control block. */
#define CTL_SIZE PAGE

static unsigned char *priv, *shared;
static struct ctl *ctl;

static uint64_t p_seed(int is_child) { return is_child ? 0xc0c0 : 0x9090; }
static uint64_t s_seed(unsigned long page) { return 0x5500 + page; }

/* Whether the 4 KiB page at `addr` is present in this process's page table. */
static int present(const void *addr, char *msg, size_t size, int *err)
{
	uint64_t e;

	*err = 0;
	if (zdtm_pagemap(&e, addr, 1)) {
		snprintf(msg, size, "read /proc/self/pagemap: %s", strerror(errno));
		*err = 1;
		return 0;
	}
	return (e >> 63) & 1;
}

/* Huge pages the object behind the area at `addr` holds. */
static long object_pages(const void *addr, unsigned long len, char *msg, size_t size)
{
	char path[128];
	struct stat st;

	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)addr, (unsigned long)addr + len);
	if (stat(path, &st)) {
		snprintf(msg, size, "stat %s: %s", path, strerror(errno));
		return -1;
	}
	return (long)(st.st_blocks * 512 / HUGE);
}

/* KernelPageSize (kB) and the ht flag of the area at `addr`, from smaps. */
static const char *smaps_check(const void *addr, const char *what, char *msg, size_t size)
{
	static char text[1 << 20];
	char head[32], *at, *next;
	long kb = -1;
	int ht = 0;

	if (zdtm_read_file("/proc/self/smaps", text, sizeof(text)) < 0)
		return snprintf(msg, size, "read /proc/self/smaps: %s", strerror(errno)), msg;
	snprintf(head, sizeof(head), "\n%lx-", (unsigned long)addr);
	at = strstr(text, head);
	if (!at)
		return snprintf(msg, size, "%s area not in smaps", what), msg;
	next = strstr(at + 1, "VmFlags:");
	if (!next)
		return snprintf(msg, size, "%s area has no VmFlags", what), msg;
	at = strstr(at, "KernelPageSize:");
	if (at && at < next)
		kb = strtol(at + strlen("KernelPageSize:"), NULL, 10);
	at = strchr(next, '\n');
	if (at)
		*at = 0;
	ht = strstr(next, " ht") != NULL;
	if (kb != (long)(HUGE >> 10) || !ht)
		return snprintf(msg, size, "%s area: KernelPageSize %ld kB, ht %d (want %lu kB, ht)", what, kb, ht, HUGE >> 10), msg;
	return NULL;
}

/* This process's view: content, allocation, smaps. NULL or an error. */
static const char *check_view(int is_child, char *msg, size_t size)
{
	const char *e;
	long d, n;
	int err, p;

	if ((d = zdtm_diff(priv, HUGE, p_seed(is_child))) >= 0)
		return snprintf(msg, size, "private huge page 0 word %ld differs", d), msg;
	for (unsigned long i = 0; i < HUGE; i += PAGE)
		if (priv[HUGE + i] != 0)
			return snprintf(msg, size, "private huge page 1 is not zero at %#lx", i), msg;
	if ((d = zdtm_diff(shared + CTL_SIZE, HUGE - CTL_SIZE, s_seed(0))) >= 0)
		return snprintf(msg, size, "shared huge page 0 word %ld differs", d), msg;
	if ((d = zdtm_diff(shared + HUGE, HUGE, s_seed(1))) >= 0)
		return snprintf(msg, size, "shared huge page 1 word %ld differs", d), msg;
	for (int i = 0; i < P_PAGES; i++) {
		p = present(priv + i * HUGE, msg, size, &err);
		if (err)
			return msg;
		if (p != (i < 2))
			return snprintf(msg, size, "private huge page %d is %sallocated, it was %s", i, p ? "" : "not ",
					i < 2 ? "allocated" : "never touched"),
			       msg;
	}
	n = object_pages(shared, S_PAGES * HUGE, msg, size);
	if (n < 0)
		return msg;
	if (n != S_PAGES)
		return snprintf(msg, size, "the shared object holds %ld huge pages, not %d", n, S_PAGES), msg;
	if ((e = smaps_check(priv, "private", msg, size)) || (e = smaps_check(shared, "shared", msg, size)))
		return e;
	return NULL;
}

static void child_main(void)
{
	uint64_t seen = 0;
	char msg[512];
	const char *err;

	zdtm_fill(priv, HUGE, p_seed(1));
	zdtm_fill(shared + HUGE, HUGE, s_seed(1));
	__atomic_store_n(&ctl->pong, (uint64_t)1, __ATOMIC_SEQ_CST); /* set up */
	for (;;) {
		uint64_t ping = __atomic_load_n(&ctl->ping, __ATOMIC_SEQ_CST);
		if (ping != seen && ping == 2) {
			seen = ping;
			err = check_view(1, msg, sizeof(msg));
			if (!err && ctl->parent_val != MAGIC_PARENT)
				err = "the child does not see the parent's value";
			if (err) {
				snprintf(ctl->child_msg, sizeof(ctl->child_msg), "child: %s", err);
				ctl->child_status = 1;
			}
			ctl->child_val = MAGIC_CHILD;
			__atomic_store_n(&ctl->pong, (uint64_t)2, __ATOMIC_SEQ_CST);
		}
		zdtm_sleep_ms(1);
	}
}

static void sabotage(void)
{
	static unsigned char copy[S_PAGES * HUGE];
	void *p;

	switch (zdtm_sabotage) {
	case 1: /* a private page's content changed */
		priv[4096] ^= 1;
		break;
	case 2: /* a huge page never touched got allocated */
		priv[2 * HUGE] = 0;
		break;
	case 3: /* the shared area is a new object, not shared with the child */
		memcpy(copy, shared, sizeof(copy));
		p = mmap(shared, S_PAGES * HUGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED, -1, 0);
		if (p == MAP_FAILED)
			zdtm_die("sabotage 3: mmap: %s", strerror(errno));
		memcpy(shared, copy, sizeof(copy));
		break;
	}
}

int main(void)
{
	char msg[512];
	const char *err;
	volatile unsigned char sink;
	long long deadline;
	pid_t child;

	zdtm_init();
	priv = mmap(NULL, P_PAGES * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	shared = mmap(NULL, S_PAGES * HUGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (priv == MAP_FAILED || shared == MAP_FAILED)
		zdtm_die("mmap MAP_HUGETLB (are enough 2 MiB huge pages free?): %s", strerror(errno));
	ctl = (struct ctl *)shared;
	zdtm_fill(priv, HUGE, p_seed(0));
	sink = priv[HUGE + 123]; /* allocated by the read, all zero */
	(void)sink;
	zdtm_fill(shared + CTL_SIZE, HUGE - CTL_SIZE, s_seed(0));

	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main();
	zdtm_kid(child);
	while (__atomic_load_n(&ctl->pong, __ATOMIC_SEQ_CST) != 1)
		zdtm_sleep_ms(1);
	if ((err = check_view(0, msg, sizeof(msg))))
		zdtm_die("before the checkpoint: %s", err);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	if ((err = check_view(0, msg, sizeof(msg))))
		zdtm_fail("parent: %s", err);
	ctl->parent_val = MAGIC_PARENT;
	__atomic_store_n(&ctl->ping, (uint64_t)2, __ATOMIC_SEQ_CST);
	deadline = zdtm_now_ms() + 10000;
	while (__atomic_load_n(&ctl->pong, __ATOMIC_SEQ_CST) != 2) {
		zdtm_check(zdtm_now_ms() < deadline,
			   "the child did not answer through the shared area within 10 s (area not shared?)");
		zdtm_sleep_ms(1);
	}
	zdtm_check(ctl->child_status == 0, "%s", ctl->child_msg);
	zdtm_check(ctl->child_val == MAGIC_CHILD, "the parent does not see the child's value");
	zdtm_pass();
}
