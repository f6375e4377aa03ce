/*
 * mem_hugetlb_refused: the hugetlbfs memory lpm refuses, in 2 MiB pages: a
 * SysV segment made with SHM_HUGETLB, attached (and marked for removal),
 * and a private mapping of a memfd made with MFD_HUGETLB, written.
 * Not in the replay list: `hugetlb_kinds_are_refused` reserves the huge
 * pages, expects the checkpoint to refuse the segment by name (and the
 * inspection to name both), and the program to run on.
 * Verified: the content of both.
 */
#include "zdtm.h"

#include <sys/mman.h>
#include <sys/shm.h>

#define HUGE (2UL << 20)

static unsigned char *seg, *priv;

int main(void)
{
	int id, fd;

	zdtm_init();
	id = shmget(IPC_PRIVATE, HUGE, IPC_CREAT | SHM_HUGETLB | 0600);
	if (id < 0)
		zdtm_die("shmget SHM_HUGETLB (are 2 MiB huge pages free?): %s", strerror(errno));
	seg = shmat(id, NULL, 0);
	if (seg == (void *)-1)
		zdtm_die("shmat: %s", strerror(errno));
	shmctl(id, IPC_RMID, NULL); /* gone with the program */
	fd = memfd_create("lpm-huge-private", MFD_HUGETLB);
	if (fd < 0 || ftruncate(fd, HUGE))
		zdtm_die("memfd_create MFD_HUGETLB: %s", strerror(errno));
	priv = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (priv == MAP_FAILED)
		zdtm_die("mmap private memfd: %s", strerror(errno));
	close(fd);
	zdtm_fill(seg, HUGE, 0x5e);
	zdtm_fill(priv, HUGE, 0x9f);
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1) /* a page changed */
		seg[4096] ^= 1;
	zdtm_check(zdtm_diff(seg, HUGE, 0x5e) < 0, "the SHM_HUGETLB segment's content changed");
	zdtm_check(zdtm_diff(priv, HUGE, 0x9f) < 0, "the private memfd mapping's content changed");
	zdtm_pass();
}
