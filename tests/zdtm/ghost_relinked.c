/*
 * ghost_relinked: files whose opened or mapped name now leads elsewhere
 * or nowhere, while other names of them remain.
 *
 * State:
 *   fd 10  gr.file O_RDWR, offset 100; then linked as gr.other, gr.file
 *          unlinked and made again as another file (its name now leads
 *          elsewhere)
 *   map    gr.map MAP_SHARED rw, linked as gr.kept, gr.map unlinked, the
 *          descriptor closed
 * Verified: fd 10's link reads "gr.file (deleted)" and fd 10 is gr.other
 * (one inode, one link) at its offset; what it writes gr.other reads and
 * back; gr.file is still the other file (its inode and content); the
 * mapping is named "gr.map (deleted)", is gr.kept's inode and shares its
 * data both ways.
 */
#include "zdtm.h"

#include <sys/mman.h>

#define PG 4096

static char *m;
static struct stat other_st, newfile_st;

static void path(char *p, const char *name)
{
	zdtm_path(p, 4096, name);
}

static int rw(const char *name)
{
	char p[4096];
	path(p, name);
	return open(p, O_RDWR);
}

static void sabotage(void)
{
	char p[4096];
	switch (zdtm_sabotage) {
	case 1: /* fd 10 reopened by its other name */
		dup2(rw("gr.other"), 10);
		lseek(10, 100, SEEK_SET);
		break;
	case 2: /* the mapping is a copy */
		mmap(m, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS, -1, 0);
		break;
	case 3: /* gr.file was replaced */
		path(p, "gr.file");
		unlink(p);
		close(open(p, O_CREAT | O_WRONLY, 0600));
		break;
	}
}

int main(void)
{
	char p[4096], q[4096], buf[2 * PG], got[2 * PG], lnk[4200], want[4200];
	struct stat s;
	ssize_t n;
	int fd;

	zdtm_init();
	path(p, "gr.file");
	path(q, "gr.other");
	unlink(q);
	fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0640);
	zdtm_fill(buf, 2 * PG, 0x4100);
	if (fd < 0 || write(fd, buf, 2 * PG) != 2 * PG || dup2(fd, 10) != 10)
		zdtm_die("create %s: %s", p, strerror(errno));
	close(fd);
	if (link(p, q) || unlink(p))
		zdtm_die("link/unlink %s: %s", p, strerror(errno));
	fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, "newfile", 7) != 7)
		zdtm_die("make %s again: %s", p, strerror(errno));
	close(fd);
	lseek(10, 100, SEEK_SET);
	if (stat(q, &other_st) || stat(p, &newfile_st))
		zdtm_die("stat: %s", strerror(errno));

	path(p, "gr.map");
	path(q, "gr.kept");
	unlink(q);
	fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0640);
	zdtm_fill(buf, 2 * PG, 0x4200);
	if (fd < 0 || write(fd, buf, 2 * PG) != 2 * PG)
		zdtm_die("create %s: %s", p, strerror(errno));
	m = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED || link(p, q) || unlink(p))
		zdtm_die("map/link/unlink %s: %s", p, strerror(errno));
	close(fd);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	n = readlink("/proc/self/fd/10", lnk, sizeof(lnk) - 1);
	zdtm_check(n > 0, "readlink: %s", strerror(errno));
	lnk[n] = 0;
	path(p, "gr.file");
	snprintf(want, sizeof(want), "%s (deleted)", p);
	zdtm_check(!strcmp(lnk, want), "fd 10 links to %s, expected %s", lnk, want);
	zdtm_check(fstat(10, &s) == 0, "fstat: %s", strerror(errno));
	zdtm_check(s.st_dev == other_st.st_dev && s.st_ino == other_st.st_ino, "fd 10 is inode %lu, gr.other is %lu",
		   (unsigned long)s.st_ino, (unsigned long)other_st.st_ino);
	zdtm_check(s.st_nlink == 1, "fd 10's file has %lu links", (unsigned long)s.st_nlink);
	zdtm_check(lseek(10, 0, SEEK_CUR) == 100, "fd 10 offset %lld", (long long)lseek(10, 0, SEEK_CUR));
	zdtm_check(stat(p, &s) == 0 && s.st_ino == newfile_st.st_ino, "gr.file is no longer the file made again");
	fd = open(p, O_RDONLY);
	zdtm_check(fd >= 0 && read(fd, got, 16) == 7 && !memcmp(got, "newfile", 7), "gr.file's content changed");
	close(fd);
	zdtm_fill(buf, 2 * PG, 0x4100);
	zdtm_check(pread(10, got, 2 * PG, 0) == 2 * PG && !memcmp(got + 8, buf + 8, 2 * PG - 8), "fd 10's data differs");
	zdtm_check(pwrite(10, "W10", 3, 0) == 3, "pwrite: %s", strerror(errno));
	fd = rw("gr.other");
	zdtm_check(fd >= 0 && pread(fd, got, 3, 0) == 3 && !memcmp(got, "W10", 3), "gr.other does not read fd 10's write");
	zdtm_check(pwrite(fd, "O", 1, 4) == 1 && pread(10, got, 1, 4) == 1 && got[0] == 'O', "fd 10 does not read gr.other's write");
	close(fd);

	zdtm_path(q, sizeof(q), "gr.map");
	snprintf(want, sizeof(want), "%s (deleted)\n", q);
	{
		static char maps[65536];
		zdtm_check(zdtm_read_file("/proc/self/maps", maps, sizeof(maps)) > 0, "read maps");
		zdtm_check(strstr(maps, want), "no mapping reads %s", want);
	}
	zdtm_fill(buf, 2 * PG, 0x4200);
	zdtm_check(!memcmp(m + 8, buf + 8, 2 * PG - 8), "the mapping's data differs");
	memcpy(m, "MAP", 3);
	fd = rw("gr.kept");
	zdtm_check(fd >= 0 && pread(fd, got, 3, 0) == 3 && !memcmp(got, "MAP", 3), "gr.kept does not read the mapping's write");
	zdtm_check(pwrite(fd, "K", 1, 5) == 1 && m[5] == 'K', "the mapping does not see gr.kept's write");
	close(fd);
	zdtm_pass();
}
