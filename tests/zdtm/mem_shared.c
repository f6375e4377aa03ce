/*
 * mem_shared: memory shared between processes, and file mappings.
 *
 * State: a MAP_SHARED|MAP_ANONYMOUS area shared by the root and a forked
 * child; a MAP_SHARED mapping of a file (pages changed through the mapping);
 * a MAP_PRIVATE mapping at a non-zero file offset with copy-on-write pages,
 * some shared by parent and child since the fork and some private to each;
 * a private anonymous area that diverged after the fork.
 * Verified: each process sees its exact view of every area; the shared file
 * holds what was written through the mapping; the private writes did not
 * reach their file; and after restore the shared area is still shared both
 * ways (ping/pong through the area itself).
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define KiB 1024UL
#define MiB (1024UL * 1024)

#define S_SIZE (4 * MiB)
#define F_SIZE (1 * MiB)
#define P_OFF (64 * KiB)
#define P_SIZE (1 * MiB)
#define A_SIZE (1 * MiB)

#define MAGIC_PARENT 0x5041524e54ULL
#define MAGIC_CHILD 0x4348494c44ULL

/* First page of the shared area. */
struct ctl {
	uint64_t ping, pong, parent_val, child_val;
	int child_status;
	char child_msg[512];
};

static char *shm, *fmap, *pmap, *anon;
static struct ctl *ctl;
static int fd_shared, fd_private;
static pid_t child;

/* Seeds; "page" is the page index inside the area. */
static uint64_t s_seed(unsigned long page) { return 0x51000000 + page * 512; }
static uint64_t f_seed(unsigned long page) { return 0xf1000000 + page * 512; }
static uint64_t f_seed2(unsigned long page) { return 0xf2000000 + page * 512; }
static uint64_t p_seed(unsigned long fpage) { return 0x71000000 + fpage * 512; }
static uint64_t p_seed2(unsigned long page) { return 0x72000000 + page * 512; }
static uint64_t a_seed(unsigned long page) { return 0xa1000000 + page * 512; }

#define P_PARENT_PAGE 6 /* private page written by the parent after fork */
#define P_CHILD_PAGE 7 /* private page written by the child after fork */
#define A_CHILD_PAGE 3 /* anon page written by the child after fork */
#define S_PARENT_PAGE 100 /* shared page the parent writes after restore */
#define S_CHILD_PAGE 200 /* shared page the child writes after restore */

static int f_changed(unsigned long page) { return page % 5 == 2; }
static int p_changed(unsigned long page) { return page % 4 == 1; }

static int open_file(const char *name, size_t size, uint64_t (*seed)(unsigned long))
{
	char path[4096];
	static char page[PAGE];
	int fd;

	zdtm_path(path, sizeof(path), name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		zdtm_die("open %s: %s", path, strerror(errno));
	for (unsigned long i = 0; i < size / PAGE; i++) {
		zdtm_fill(page, PAGE, seed(i));
		if (pwrite(fd, page, PAGE, i * PAGE) != (ssize_t)PAGE)
			zdtm_die("write %s: %s", path, strerror(errno));
	}
	return fd;
}

/*
 * Checks this process's view of everything but the control page; returns an
 * error message or NULL. Used by both processes.
 */
static const char *check_view(int is_child, char *msg, size_t size)
{
	static char page[PAGE];
	unsigned long pg;
	long d;

	for (pg = 1; pg < S_SIZE / PAGE; pg++) {
		if (pg == S_PARENT_PAGE || pg == S_CHILD_PAGE)
			continue;
		if ((d = zdtm_diff(shm + pg * PAGE, PAGE, s_seed(pg))) >= 0)
			return snprintf(msg, size, "shared anon page %lu word %ld differs", pg, d), msg;
	}
	for (pg = 0; pg < F_SIZE / PAGE; pg++) {
		uint64_t seed = f_changed(pg) ? f_seed2(pg) : f_seed(pg);
		if ((d = zdtm_diff(fmap + pg * PAGE, PAGE, seed)) >= 0)
			return snprintf(msg, size, "shared file mapping page %lu word %ld differs", pg, d), msg;
		if (pread(fd_shared, page, PAGE, pg * PAGE) != (ssize_t)PAGE)
			return snprintf(msg, size, "pread shared file: %s", strerror(errno)), msg;
		if ((d = zdtm_diff(page, PAGE, seed)) >= 0)
			return snprintf(msg, size, "shared file page %lu word %ld differs from what was written through the mapping", pg, d), msg;
	}
	for (pg = 0; pg < P_SIZE / PAGE; pg++) {
		uint64_t seed = p_changed(pg) ? p_seed2(pg) : p_seed(pg + P_OFF / PAGE);
		if (pg == P_PARENT_PAGE && !is_child)
			seed = p_seed2(pg) + 1;
		if (pg == P_CHILD_PAGE && is_child)
			seed = p_seed2(pg) + 2;
		if ((d = zdtm_diff(pmap + pg * PAGE, PAGE, seed)) >= 0)
			return snprintf(msg, size, "private file mapping page %lu word %ld differs", pg, d), msg;
	}
	for (pg = 0; pg < (P_SIZE + P_OFF) / PAGE; pg++) {
		if (pread(fd_private, page, PAGE, pg * PAGE) != (ssize_t)PAGE)
			return snprintf(msg, size, "pread private file: %s", strerror(errno)), msg;
		if ((d = zdtm_diff(page, PAGE, p_seed(pg))) >= 0)
			return snprintf(msg, size, "private file page %lu word %ld changed on disk (a MAP_PRIVATE write reached the file)", pg, d), msg;
	}
	for (pg = 0; pg < A_SIZE / PAGE; pg++) {
		uint64_t seed = (pg == A_CHILD_PAGE && is_child) ? a_seed(pg) + 3 : a_seed(pg);
		if ((d = zdtm_diff(anon + pg * PAGE, PAGE, seed)) >= 0)
			return snprintf(msg, size, "private anon page %lu word %ld differs (fork COW)", pg, d), msg;
	}
	return NULL;
}

static void child_main(void)
{
	uint64_t seen = 0;
	char msg[512];
	const char *err;

	zdtm_fill(pmap + P_CHILD_PAGE * PAGE, PAGE, p_seed2(P_CHILD_PAGE) + 2);
	zdtm_fill(anon + A_CHILD_PAGE * PAGE, PAGE, a_seed(A_CHILD_PAGE) + 3);
	__atomic_store_n(&ctl->pong, (uint64_t)1, __ATOMIC_SEQ_CST); /* set up */
	for (;;) {
		uint64_t ping = __atomic_load_n(&ctl->ping, __ATOMIC_SEQ_CST);
		if (ping != seen && ping == 2) {
			seen = ping;
			err = check_view(1, msg, sizeof(msg));
			if (!err && ctl->parent_val != MAGIC_PARENT)
				err = "child does not see the parent's value";
			if (!err && zdtm_diff(shm + S_PARENT_PAGE * PAGE, PAGE, s_seed(S_PARENT_PAGE) + 9) >= 0)
				err = "child does not see the page the parent wrote";
			if (err) {
				snprintf(ctl->child_msg, sizeof(ctl->child_msg), "child: %s", err);
				ctl->child_status = 1;
			}
			zdtm_fill(shm + S_CHILD_PAGE * PAGE, PAGE, s_seed(S_CHILD_PAGE) + 8);
			ctl->child_val = MAGIC_CHILD;
			__atomic_store_n(&ctl->pong, (uint64_t)2, __ATOMIC_SEQ_CST);
		}
		zdtm_sleep_ms(1);
	}
}

static void sabotage(void)
{
	static char page[PAGE];
	void *p;

	switch (zdtm_sabotage) {
	case 1: /* shared anon data lost */
		memset(shm + 50 * PAGE, 0, PAGE);
		break;
	case 2: /* the shared area is restored as a new area, not shared with the child */
		p = mmap(NULL, S_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		memcpy(p, shm, S_SIZE);
		mremap(p, S_SIZE, S_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, shm);
		break;
	case 3: /* the shared file mapping lost a write */
		zdtm_fill(page, PAGE, f_seed(2));
		pwrite(fd_shared, page, PAGE, 2 * PAGE);
		break;
	case 4: /* a private write reached the file */
		zdtm_fill(page, PAGE, p_seed2(1));
		pwrite(fd_private, page, PAGE, P_OFF + PAGE);
		break;
	case 5: /* fork COW broken: the parent sees the child's page */
		zdtm_fill(anon + A_CHILD_PAGE * PAGE, PAGE, a_seed(A_CHILD_PAGE) + 3);
		break;
	}
}

int main(void)
{
	char msg[512];
	const char *err;
	long long deadline;

	zdtm_init();
	shm = mmap(NULL, S_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	anon = mmap(NULL, A_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED || anon == MAP_FAILED)
		zdtm_die("mmap: %s", strerror(errno));
	ctl = (struct ctl *)shm;
	for (unsigned long pg = 1; pg < S_SIZE / PAGE; pg++)
		zdtm_fill(shm + pg * PAGE, PAGE, s_seed(pg));
	for (unsigned long pg = 0; pg < A_SIZE / PAGE; pg++)
		zdtm_fill(anon + pg * PAGE, PAGE, a_seed(pg));

	fd_shared = open_file("mem_shared.shared", F_SIZE, f_seed);
	fmap = mmap(NULL, F_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_shared, 0);
	fd_private = open_file("mem_shared.private", P_OFF + P_SIZE, p_seed);
	pmap = mmap(NULL, P_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd_private, P_OFF);
	if (fmap == MAP_FAILED || pmap == MAP_FAILED)
		zdtm_die("mmap file: %s", strerror(errno));
	for (unsigned long pg = 0; pg < F_SIZE / PAGE; pg++)
		if (f_changed(pg))
			zdtm_fill(fmap + pg * PAGE, PAGE, f_seed2(pg));
	for (unsigned long pg = 0; pg < P_SIZE / PAGE; pg++)
		if (p_changed(pg))
			zdtm_fill(pmap + pg * PAGE, PAGE, p_seed2(pg));
	if (msync(fmap, F_SIZE, MS_SYNC))
		zdtm_die("msync: %s", strerror(errno));

	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main();
	zdtm_kid(child);
	zdtm_fill(pmap + P_PARENT_PAGE * PAGE, PAGE, p_seed2(P_PARENT_PAGE) + 1);
	while (__atomic_load_n(&ctl->pong, __ATOMIC_SEQ_CST) != 1)
		zdtm_sleep_ms(1);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	if ((err = check_view(0, msg, sizeof(msg))))
		zdtm_fail("parent: %s", err);
	zdtm_fill(shm + S_PARENT_PAGE * PAGE, PAGE, s_seed(S_PARENT_PAGE) + 9);
	ctl->parent_val = MAGIC_PARENT;
	__atomic_store_n(&ctl->ping, (uint64_t)2, __ATOMIC_SEQ_CST);
	deadline = zdtm_now_ms() + 10000;
	while (__atomic_load_n(&ctl->pong, __ATOMIC_SEQ_CST) != 2) {
		zdtm_check(zdtm_now_ms() < deadline,
			   "the child did not answer through the shared area within 10 s (area not shared?)");
		zdtm_sleep_ms(1);
	}
	zdtm_check(ctl->child_status == 0, "%s", ctl->child_msg);
	zdtm_check(ctl->child_val == MAGIC_CHILD, "parent does not see the child's value");
	zdtm_check(zdtm_diff(shm + S_CHILD_PAGE * PAGE, PAGE, s_seed(S_CHILD_PAGE) + 8) < 0,
		   "parent does not see the page the child wrote");
	zdtm_pass();
}
