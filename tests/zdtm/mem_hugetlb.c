/*
 * mem_hugetlb: huge pages of hugetlbfs, anonymous (MAP_HUGETLB), one
 * private and one shared, each of one 2 MiB page, written.
 * Not in the replay list: `hugetlb_is_refused` reserves two huge pages for
 * it (the machine has none), expects the checkpoint to refuse the areas by
 * name, the program to run on, and gives the pages back.
 * Verified: the content of both pages.
 */
#include "zdtm.h"

#include <sys/mman.h>

#define HUGE (2UL << 20)

static unsigned char *priv, *shared;

static int intact(void)
{
	unsigned long i;

	for (i = 0; i < HUGE; i += 4096)
		if (priv[i] != (unsigned char)(i >> 12) || shared[i] != (unsigned char)~(i >> 12))
			return 0;
	return 1;
}

int main(void)
{
	unsigned long i;

	zdtm_init();
	priv = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	shared = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (priv == MAP_FAILED || shared == MAP_FAILED)
		zdtm_die("mmap MAP_HUGETLB (are 2 huge pages of 2 MiB reserved?): %s", strerror(errno));
	for (i = 0; i < HUGE; i += 4096) {
		priv[i] = (unsigned char)(i >> 12);
		shared[i] = (unsigned char)~(i >> 12);
	}
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1) /* a page changed */
		priv[4096] ^= 1;
	zdtm_check(intact(), "the huge pages' content changed");
	zdtm_pass();
}
