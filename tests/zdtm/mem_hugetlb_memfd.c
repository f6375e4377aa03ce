/*
 * mem_hugetlb_memfd: memfds on hugetlbfs (MFD_HUGETLB), in 2 MiB pages.
 *
 * State: memfd "lpm-huge-a" of three huge pages, held by a descriptor and
 * mapped shared whole: page 0 written through the mapping, page 1 only
 * read (allocated, all zero), page 2 never touched; memfd "lpm-huge-b" of
 * one huge page, written through its shared mapping, its descriptor
 * closed (only the mapping holds it).
 * Verified: the content through the mappings and through the descriptor
 * (pread); the descriptor's name and size; how many huge pages each
 * memfd holds (st_blocks: 2 and 1, so the untouched page stays
 * unallocated); smaps shows both mappings as hugetlbfs (VmFlags ht) in
 * pages of 2048 kB; and after the restore, that the mapping and the
 * descriptor are one object (a write through one seen through the other).
 * Needs 2 MiB huge pages free: the runners reserve them (Need::HugePages).
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/stat.h>

#define HUGE (2UL << 20)
#define A_PAGES 3

static unsigned char *a, *b;
static int fd_a;

static uint64_t a_seed(void) { return 0xa0a0; }
static uint64_t b_seed(void) { return 0xb0b0; }

/* KernelPageSize and the ht flag of the area at `addr`, from smaps. */
static const char *smaps_check(const void *addr, const char *what, char *msg, size_t size)
{
	static char text[1 << 20];
	char head[32], *at, *next;
	long kb = -1;
	int ht;

	if (zdtm_read_file("/proc/self/smaps", text, sizeof(text)) < 0)
		return snprintf(msg, size, "read /proc/self/smaps: %s", strerror(errno)), msg;
	snprintf(head, sizeof(head), "\n%lx-", (unsigned long)addr);
	at = strstr(text, head);
	if (!at)
		return snprintf(msg, size, "%s mapping not in smaps", what), msg;
	next = strstr(at + 1, "VmFlags:");
	if (!next)
		return snprintf(msg, size, "%s mapping has no VmFlags", what), msg;
	at = strstr(at, "KernelPageSize:");
	if (at && at < next)
		kb = strtol(at + strlen("KernelPageSize:"), NULL, 10);
	at = strchr(next, '\n');
	if (at)
		*at = 0;
	ht = strstr(next, " ht") != NULL;
	if (kb != (long)(HUGE >> 10) || !ht)
		return snprintf(msg, size, "%s mapping: KernelPageSize %ld kB, ht %d (want %lu kB, ht)", what, kb, ht, HUGE >> 10), msg;
	return NULL;
}

static const char *check(char *msg, size_t size)
{
	static unsigned char page[HUGE];
	char path[128], link[256];
	struct stat st;
	const char *e;
	ssize_t n;
	long d;

	if ((d = zdtm_diff(a, HUGE, a_seed())) >= 0)
		return snprintf(msg, size, "memfd a page 0 word %ld differs through the mapping", d), msg;
	for (unsigned long i = 0; i < HUGE; i += 4096)
		if (a[HUGE + i])
			return snprintf(msg, size, "memfd a page 1 is not zero at %#lx", i), msg;
	if ((d = zdtm_diff(b, HUGE, b_seed())) >= 0)
		return snprintf(msg, size, "memfd b word %ld differs", d), msg;
	if (pread(fd_a, page, HUGE, 0) != (ssize_t)HUGE)
		return snprintf(msg, size, "pread memfd a: %s", strerror(errno)), msg;
	if ((d = zdtm_diff(page, HUGE, a_seed())) >= 0)
		return snprintf(msg, size, "memfd a page 0 word %ld differs through the descriptor", d), msg;
	if (fstat(fd_a, &st))
		return snprintf(msg, size, "fstat memfd a: %s", strerror(errno)), msg;
	if (st.st_size != (off_t)(A_PAGES * HUGE) || st.st_blocks * 512 != (blkcnt_t)(2 * HUGE))
		return snprintf(msg, size, "memfd a: size %ld, %ld huge pages held (want %lu, 2)", (long)st.st_size,
				(long)(st.st_blocks * 512 / HUGE), A_PAGES * HUGE),
		       msg;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd_a);
	n = readlink(path, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = 0;
	if (strcmp(link, "/memfd:lpm-huge-a (deleted)"))
		return snprintf(msg, size, "fd %d names %s", fd_a, link), msg;
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)b, (unsigned long)b + HUGE);
	if (stat(path, &st))
		return snprintf(msg, size, "stat %s: %s", path, strerror(errno)), msg;
	if (st.st_blocks * 512 != (blkcnt_t)HUGE)
		return snprintf(msg, size, "memfd b holds %ld huge pages, not 1", (long)(st.st_blocks * 512 / HUGE)), msg;
	if ((e = smaps_check(a, "memfd a", msg, size)) || (e = smaps_check(b, "memfd b", msg, size)))
		return e;
	return NULL;
}

static void sabotage(void)
{
	static unsigned char copy[A_PAGES * HUGE];
	void *p;
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* content changed */
		a[4096] ^= 1;
		break;
	case 2: /* the huge page never touched got allocated */
		if (fallocate(fd_a, 0, 2 * HUGE, HUGE))
			zdtm_die("sabotage 2: fallocate: %s", strerror(errno));
		break;
	case 3: /* the mapping is another memfd's, not the descriptor's */
		memcpy(copy, a, 2 * HUGE);
		fd = memfd_create("lpm-huge-a", MFD_HUGETLB);
		if (fd < 0 || ftruncate(fd, A_PAGES * HUGE))
			zdtm_die("sabotage 3: memfd: %s", strerror(errno));
		p = mmap(a, A_PAGES * HUGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
		if (p == MAP_FAILED)
			zdtm_die("sabotage 3: mmap: %s", strerror(errno));
		close(fd);
		memcpy(a, copy, 2 * HUGE);
		break;
	}
}

int main(void)
{
	static unsigned char page[4096];
	volatile unsigned char sink;
	char msg[512];
	const char *err;
	int fd_b;

	zdtm_init();
	fd_a = memfd_create("lpm-huge-a", MFD_HUGETLB);
	fd_b = memfd_create("lpm-huge-b", MFD_HUGETLB);
	if (fd_a < 0 || fd_b < 0)
		zdtm_die("memfd_create MFD_HUGETLB: %s", strerror(errno));
	if (ftruncate(fd_a, A_PAGES * HUGE) || ftruncate(fd_b, HUGE))
		zdtm_die("ftruncate: %s", strerror(errno));
	a = mmap(NULL, A_PAGES * HUGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_a, 0);
	b = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_b, 0);
	if (a == MAP_FAILED || b == MAP_FAILED)
		zdtm_die("mmap memfd (are enough 2 MiB huge pages free?): %s", strerror(errno));
	close(fd_b);
	zdtm_fill(a, HUGE, a_seed());
	sink = a[HUGE + 77]; /* allocated by the read, all zero */
	(void)sink;
	zdtm_fill(b, HUGE, b_seed());
	if ((err = check(msg, sizeof(msg))))
		zdtm_die("before the checkpoint: %s", err);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	if ((err = check(msg, sizeof(msg))))
		zdtm_fail("%s", err);
	/* One object: what the mapping writes, the descriptor reads. */
	memset(a + 8192, 0x5a, 4096);
	zdtm_check(pread(fd_a, page, sizeof(page), 8192) == sizeof(page), "pread memfd a: %s", strerror(errno));
	for (unsigned i = 0; i < sizeof(page); i++)
		zdtm_check(page[i] == 0x5a, "a write through the mapping of memfd a is not seen through its descriptor (not one object)");
	zdtm_pass();
}
