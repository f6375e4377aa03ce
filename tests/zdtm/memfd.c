/*
 * memfd: memfds with content, seals and a mapping shared with the fd.
 *
 * State: memfd "zdtm-mf" (sealing allowed, F_SEAL_SHRINK|F_SEAL_GROW) of
 * three pages and 100 bytes: page 0 written through the fd, page 1 a hole,
 * page 2 written through a MAP_SHARED mapping of the whole memfd; its
 * offset at 1234. Memfd "zdtm-sealed" (close-on-exec) holding "hello",
 * sealed F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL. Memfd
 * "zdtm-plain" created without sealing (so F_SEAL_SEAL), 5000 bytes.
 * A child holds the fds and the mapping too.
 * Verified: names (fd links), seals, sizes, offsets, flags; content
 * through pread and through the mapping; a write through the mapping is
 * read back through the fd and a write through the fd is seen in the
 * mapping; the child sees a value the root writes into the mapping.
 */
#include "zdtm.h"

#include <sys/mman.h>

#define PG 4096
#define SIZE (3 * PG + 100)

static int m1, m2, m3, fl1, kid_pipe[2];
static unsigned char *map;
static pid_t child;

static void child_main(void)
{
	char c;

	close(kid_pipe[1]);
	while (read(kid_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	/* The root wrote 0x5a at page 1 through the fd just before. */
	_exit(map[PG + 7] == 0x5a ? 0 : 3);
}

static void expect_link(int fd, const char *name)
{
	char path[64], link[256], want[256];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = 0;
	snprintf(want, sizeof(want), "/memfd:%s (deleted)", name);
	zdtm_check(!strcmp(link, want), "fd %d links to %s, expected %s", fd, link, want);
}

static void sabotage(void)
{
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* a byte changed through the mapping */
		map[2 * PG + 5] ^= 1;
		break;
	case 2: /* the offset moved */
		lseek(m1, 0, SEEK_SET);
		break;
	case 3: /* one more seal */
		fcntl(m1, F_ADD_SEALS, F_SEAL_SEAL);
		break;
	case 4: /* the mapping no longer shares with the fd: a copy is mapped over it */
		fd = memfd_create("zdtm-mf", 0);
		ftruncate(fd, SIZE);
		for (int i = 0; i < 3; i++)
			pwrite(fd, map + i * PG, PG, i * PG);
		mmap(map, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
		break;
	case 5: /* the plain memfd lost its data */
		ftruncate(m3, 0);
		break;
	}
}

int main(void)
{
	static unsigned char page[PG], got[PG];
	char b[8];
	int status;

	zdtm_init();
	m1 = memfd_create("zdtm-mf", MFD_ALLOW_SEALING);
	m2 = memfd_create("zdtm-sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	m3 = memfd_create("zdtm-plain", 0);
	if (m1 < 0 || m2 < 0 || m3 < 0)
		zdtm_die("memfd_create: %s", strerror(errno));
	if (ftruncate(m1, SIZE) || ftruncate(m3, 5000))
		zdtm_die("ftruncate: %s", strerror(errno));
	zdtm_fill(page, PG, 0x1000);
	if (pwrite(m1, page, PG, 0) != PG || pwrite(m3, page, 4096, 0) != 4096 || write(m2, "hello", 5) != 5)
		zdtm_die("write: %s", strerror(errno));
	map = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, m1, 0);
	if (map == MAP_FAILED)
		zdtm_die("mmap: %s", strerror(errno));
	zdtm_fill(map + 2 * PG, PG, 0x3000);
	if (fcntl(m1, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) ||
	    fcntl(m2, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL))
		zdtm_die("F_ADD_SEALS: %s", strerror(errno));
	fl1 = fcntl(m1, F_GETFL);
	if (lseek(m1, 1234, SEEK_SET) != 1234)
		zdtm_die("lseek: %s", strerror(errno));
	if (pipe(kid_pipe))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main();
	zdtm_kid(child);
	close(kid_pipe[0]);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	expect_link(m1, "zdtm-mf");
	expect_link(m2, "zdtm-sealed");
	expect_link(m3, "zdtm-plain");
	zdtm_check(fcntl(m1, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW), "seals of zdtm-mf %#x", fcntl(m1, F_GET_SEALS));
	zdtm_check(fcntl(m2, F_GET_SEALS) == (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), "seals of zdtm-sealed %#x",
		   fcntl(m2, F_GET_SEALS));
	zdtm_check(fcntl(m3, F_GET_SEALS) == F_SEAL_SEAL, "seals of zdtm-plain %#x", fcntl(m3, F_GET_SEALS));
	zdtm_check(lseek(m1, 0, SEEK_CUR) == 1234, "offset %lld, expected 1234", (long long)lseek(m1, 0, SEEK_CUR));
	zdtm_check(lseek(m1, 0, SEEK_END) == SIZE && lseek(m3, 0, SEEK_END) == 5000 && lseek(m2, 0, SEEK_END) == 5, "sizes changed");
	zdtm_check(fcntl(m2, F_GETFD) == FD_CLOEXEC && fcntl(m1, F_GETFD) == 0, "FD_CLOEXEC changed");
	zdtm_check(fcntl(m1, F_GETFL) == fl1 && (fl1 & O_ACCMODE) == O_RDWR, "F_GETFL %#o, was %#o", fcntl(m1, F_GETFL), fl1);

	zdtm_check(pread(m1, got, PG, 0) == PG && zdtm_diff(got, PG, 0x1000) < 0, "page 0 differs (fd)");
	zdtm_check(zdtm_diff(map, PG, 0x1000) < 0, "page 0 differs (mapping)");
	zdtm_check(pread(m1, got, PG, PG) == PG, "read page 1: %s", strerror(errno));
	for (int i = 0; i < PG; i++)
		zdtm_check(!got[i] && !map[PG + i], "page 1 is not zero at %d", i);
	zdtm_check(pread(m1, got, PG, 2 * PG) == PG && zdtm_diff(got, PG, 0x3000) < 0, "page 2 differs (fd)");
	zdtm_check(zdtm_diff(map + 2 * PG, PG, 0x3000) < 0, "page 2 differs (mapping)");
	zdtm_check(pread(m2, b, 8, 0) == 5 && !memcmp(b, "hello", 5), "zdtm-sealed content differs");
	zdtm_check(write(m2, "x", 1) < 0 && errno == EPERM, "zdtm-sealed accepts writes");
	zdtm_check(pread(m3, got, PG, 0) == PG && zdtm_diff(got, PG, 0x1000) < 0, "zdtm-plain differs");

	map[3 * PG + 1] = 0x77;
	zdtm_check(pread(m1, b, 1, 3 * PG + 1) == 1 && (unsigned char)b[0] == 0x77, "a write through the mapping is not seen through the fd");
	b[0] = 0x5a;
	zdtm_check(pwrite(m1, b, 1, PG + 7) == 1 && map[PG + 7] == 0x5a, "a write through the fd is not seen in the mapping");
	zdtm_check(write(kid_pipe[1], "g", 1) == 1, "wake the child: %s", strerror(errno));
	status = zdtm_wait_kid(child, "finish");
	zdtm_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child does not see the root's write (status %#x)", status);
	zdtm_pass();
}
