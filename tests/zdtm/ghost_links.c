/*
 * ghost_links: a file with several hard links, opened through each,
 * whose links are removed one by one before it is resized.
 *
 * State: gl.a written with 2 pages + 100 bytes, linked as gl.b and gl.c;
 * fd 10 opened through gl.a O_RDWR (offset 100), fd 11 through gl.b
 * O_RDONLY (offset 200), fd 12 through gl.c O_WRONLY|O_APPEND; then gl.a,
 * gl.b and gl.c unlinked in that order (the link count checked after
 * each), the file grown to 5 pages, 10 bytes appended through fd 12, and
 * shrunk to 4 pages + 7 bytes.
 * Verified: the three fds are one inode with no link, each named after
 * the link it was opened through; size and content (data, then zeros);
 * offsets and flags; after restore a write through fd 10 is read through
 * fd 11, an append through fd 12 grows the size all three see.
 */
#include "zdtm.h"

#include <sys/stat.h>

#define DATA (2 * 4096 + 100)
#define FINAL (4 * 4096 + 7)

static int fl_before[3];

static void path(char *buf, const char *name)
{
	zdtm_path(buf, 4096, name);
}

static void open_as(const char *name, int flags, int target)
{
	char p[4096];
	int fd;

	path(p, name);
	fd = open(p, flags);
	if (fd < 0 || dup2(fd, target) != target)
		zdtm_die("open %s: %s", p, strerror(errno));
	close(fd);
}

static void unlink_checked(const char *name, nlink_t left)
{
	char p[4096];
	struct stat st;

	path(p, name);
	if (unlink(p) || fstat(10, &st) || st.st_nlink != left)
		zdtm_die("unlink %s: %s (links %lu)", name, strerror(errno), (unsigned long)st.st_nlink);
}

static void check_link(int fd, const char *name)
{
	char lp[64], link[4096], want[4200], p[4096];
	ssize_t n;

	snprintf(lp, sizeof(lp), "/proc/self/fd/%d", fd);
	n = readlink(lp, link, sizeof(link) - 1);
	zdtm_check(n > 0, "readlink fd %d: %s", fd, strerror(errno));
	link[n] = 0;
	path(p, name);
	snprintf(want, sizeof(want), "%s (deleted)", p);
	zdtm_check(!strcmp(link, want), "fd %d links to %s, expected %s", fd, link, want);
}

static void sabotage(void)
{
	char p[4096];
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* fd 11 became a copy of its own */
		path(p, "gl.copy");
		fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
		unlink(p);
		dup2(fd, 11);
		break;
	case 2: /* the size was lost */
		ftruncate(10, FINAL + 1);
		break;
	case 3: /* a data byte changed */
		pwrite(10, "!", 1, 4096);
		break;
	}
}

int main(void)
{
	static char b[5 * 4096], want[5 * 4096];
	char p[4096];
	struct stat st[3];

	zdtm_init();
	path(p, "gl.a");
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0640);
	zdtm_fill(b, sizeof(b), 0x8100);
	if (fd < 0 || write(fd, b, DATA) != DATA)
		zdtm_die("write %s: %s", p, strerror(errno));
	close(fd);
	{
		char q[4096];
		path(q, "gl.b");
		if (link(p, q))
			zdtm_die("link: %s", strerror(errno));
		path(q, "gl.c");
		if (link(p, q))
			zdtm_die("link: %s", strerror(errno));
	}
	open_as("gl.a", O_RDWR, 10);
	open_as("gl.b", O_RDONLY, 11);
	open_as("gl.c", O_WRONLY | O_APPEND, 12);
	if (lseek(10, 100, SEEK_SET) != 100 || lseek(11, 200, SEEK_SET) != 200)
		zdtm_die("lseek: %s", strerror(errno));
	unlink_checked("gl.a", 2);
	unlink_checked("gl.b", 1);
	unlink_checked("gl.c", 0);
	if (ftruncate(10, 5 * 4096) || write(12, "0123456789", 10) != 10 || ftruncate(10, FINAL))
		zdtm_die("resize: %s", strerror(errno));
	for (int i = 0; i < 3; i++)
		fl_before[i] = fcntl(10 + i, F_GETFL);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < 3; i++) {
		zdtm_check(fstat(10 + i, &st[i]) == 0, "fstat fd %d: %s", 10 + i, strerror(errno));
		zdtm_check(st[i].st_dev == st[0].st_dev && st[i].st_ino == st[0].st_ino,
			   "fd %d is another file than fd 10", 10 + i);
		zdtm_check(st[i].st_nlink == 0, "fd %d: the file has %lu links", 10 + i, (unsigned long)st[i].st_nlink);
		zdtm_check(fcntl(10 + i, F_GETFL) == fl_before[i], "fd %d F_GETFL %#o, was %#o", 10 + i,
			   fcntl(10 + i, F_GETFL), fl_before[i]);
	}
	zdtm_check(st[0].st_size == FINAL, "size %lld, expected %d", (long long)st[0].st_size, FINAL);
	zdtm_check((st[0].st_mode & 07777) == 0640, "mode %o", st[0].st_mode & 07777);
	check_link(10, "gl.a");
	check_link(11, "gl.b");
	check_link(12, "gl.c");
	zdtm_check(lseek(10, 0, SEEK_CUR) == 100 && lseek(11, 0, SEEK_CUR) == 200, "offsets %lld and %lld",
		   (long long)lseek(10, 0, SEEK_CUR), (long long)lseek(11, 0, SEEK_CUR));
	zdtm_fill(want, sizeof(want), 0x8100);
	memset(want + DATA, 0, sizeof(want) - DATA);
	zdtm_check(pread(11, b, sizeof(b), 0) == FINAL, "pread: %s", strerror(errno));
	for (int i = 0; i < FINAL; i++)
		zdtm_check(b[i] == want[i], "byte %d differs", i);
	/* One file: writes through one fd are read through another. */
	zdtm_check(pwrite(10, "HELLO", 5, 3000) == 5, "pwrite: %s", strerror(errno));
	zdtm_check(pread(11, b, 5, 3000) == 5 && !memcmp(b, "HELLO", 5), "fd 11 does not read what fd 10 wrote");
	zdtm_check(write(12, "tail", 4) == 4, "append: %s", strerror(errno));
	for (int i = 0; i < 3; i++)
		zdtm_check(fstat(10 + i, &st[i]) == 0 && st[i].st_size == FINAL + 4,
			   "fd %d sees %lld bytes after an append through fd 12", 10 + i, (long long)st[i].st_size);
	zdtm_check(pread(10, b, 4, FINAL) == 4 && !memcmp(b, "tail", 4), "fd 10 does not read the append");
	zdtm_pass();
}
