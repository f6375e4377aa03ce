/*
 * inotify: watches and their descriptors.
 *
 * State: a non-blocking inotify instance with watch 1 on the directory
 * "watched" (IN_CREATE|IN_DELETE) and watch 3 on the file "watched/f"
 * (IN_MODIFY|IN_CLOSE_WRITE); watch 2 was added and removed, so the
 * descriptors have a gap. A second, close-on-exec instance without
 * watches. No event is queued.
 * Verified: the wd/ino/mask of every watch in fdinfo; flags; nothing queued;
 * creating and removing "watched/new" reports IN_CREATE and IN_DELETE on
 * wd 1 with the name; rewriting the byte of "watched/f" reports IN_MODIFY
 * and IN_CLOSE_WRITE on wd 3; a new watch gets descriptor 4.
 */
#include "zdtm.h"

#include <sys/inotify.h>
#include <sys/ioctl.h>

static int in, in2, fl;
static char watches[1024], dir[4096], file[4096], newf[4096], work[4096];

/* "wd:... ino:... mask:..." of every watch. */
static void watches_of(int fd, char *out, size_t size)
{
	char path[64], text[4096];
	const char *l;
	size_t off = 0;

	out[0] = 0;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (zdtm_read_file(path, text, sizeof(text)) < 0)
		return;
	for (l = strstr(text, "inotify wd:"); l && off < size; l = strstr(l + 1, "inotify wd:")) {
		const char *end = strstr(l, " ignored_mask");
		char wd[16], ino[32];
		const char *m = strstr(l, "mask:");
		if (!end || !m || sscanf(l, "inotify wd:%15s ino:%31s", wd, ino) != 2)
			break;
		off += snprintf(out + off, size - off, "wd %s ino %s %.*s;", wd, ino, (int)(end - m), m);
	}
}

/* Reads events (waiting up to 10 s for the first) into buf; returns bytes. */
static ssize_t events(char *buf, size_t size, size_t want)
{
	long long deadline = zdtm_now_ms() + 10000;
	size_t off = 0;

	while (off < want && zdtm_now_ms() < deadline) {
		ssize_t r = read(in, buf + off, size - off);
		if (r > 0)
			off += r;
		else
			zdtm_sleep_ms(5);
	}
	return off;
}

static void sabotage(void)
{
	int fd;

	switch (zdtm_sabotage) {
	case 1: /* watch 1 was removed (and its IN_IGNORED read) */
		inotify_rm_watch(in, 1);
		zdtm_sleep_ms(10);
		{
			char b[256];
			read(in, b, sizeof(b));
		}
		break;
	case 2: /* a watch more (which takes descriptor 4) */
		inotify_add_watch(in, work, IN_ATTRIB);
		break;
	case 3: /* an event is queued */
		fd = open(newf, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
		close(fd);
		unlink(newf);
		break;
	case 4: /* watch 3 got another mask */
		inotify_add_watch(in, file, IN_ATTRIB);
		break;
	}
}

int main(void)
{
	char buf[4096], now[1024];
	struct inotify_event *ev;
	int fd, wd, n;
	ssize_t len;

	zdtm_init();
	zdtm_path(work, sizeof(work), ".");
	zdtm_path(dir, sizeof(dir), "watched");
	zdtm_path(file, sizeof(file), "watched/f");
	zdtm_path(newf, sizeof(newf), "watched/new");
	if (mkdir(dir, 0700) && errno != EEXIST)
		zdtm_die("mkdir %s: %s", dir, strerror(errno));
	fd = open(file, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, "x", 1) != 1 || close(fd))
		zdtm_die("create %s: %s", file, strerror(errno));
	in = inotify_init1(IN_NONBLOCK);
	in2 = inotify_init1(IN_CLOEXEC);
	if (in < 0 || in2 < 0)
		zdtm_die("inotify_init1: %s", strerror(errno));
	if (inotify_add_watch(in, dir, IN_CREATE | IN_DELETE) != 1)
		zdtm_die("watch 1: %s", strerror(errno));
	wd = inotify_add_watch(in, work, IN_ATTRIB);
	if (wd != 2 || inotify_rm_watch(in, wd))
		zdtm_die("watch 2: %s", strerror(errno));
	if (inotify_add_watch(in, file, IN_MODIFY | IN_CLOSE_WRITE) != 3)
		zdtm_die("watch 3: %s", strerror(errno));
	while (read(in, buf, sizeof(buf)) > 0) /* IN_IGNORED of watch 2 */
		;
	fl = fcntl(in, F_GETFL);
	watches_of(in, watches, sizeof(watches));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	watches_of(in, now, sizeof(now));
	zdtm_check(!strcmp(now, watches), "watches: %s, were %s", now, watches);
	watches_of(in2, now, sizeof(now));
	zdtm_check(!now[0], "the second instance has watches: %s", now);
	zdtm_check(fcntl(in, F_GETFL) == fl, "F_GETFL %#o, was %#o", fcntl(in, F_GETFL), fl);
	zdtm_check(fcntl(in2, F_GETFD) == FD_CLOEXEC && fcntl(in, F_GETFD) == 0, "FD_CLOEXEC changed");
	zdtm_check(ioctl(in, FIONREAD, &n) == 0 && n == 0, "%d bytes of events queued", n);

	fd = open(newf, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	zdtm_check(fd >= 0, "create %s: %s", newf, strerror(errno));
	close(fd);
	zdtm_check(unlink(newf) == 0, "unlink %s: %s", newf, strerror(errno));
	len = events(buf, sizeof(buf), 2 * (sizeof(struct inotify_event) + 16));
	ev = (struct inotify_event *)buf;
	zdtm_check(len > 0 && ev->wd == 1 && (ev->mask & IN_CREATE) && !strcmp(ev->name, "new"),
		   "first event: %zd bytes, wd %d mask %#x", len, len > 0 ? ev->wd : -1, len > 0 ? ev->mask : 0);
	ev = (struct inotify_event *)(buf + sizeof(*ev) + ev->len);
	zdtm_check((char *)ev < buf + len && ev->wd == 1 && (ev->mask & IN_DELETE), "no IN_DELETE on wd 1");

	fd = open(file, O_WRONLY | O_CLOEXEC);
	zdtm_check(fd >= 0 && pwrite(fd, "x", 1, 0) == 1 && close(fd) == 0, "rewrite %s: %s", file, strerror(errno));
	len = events(buf, sizeof(buf), 2 * sizeof(struct inotify_event));
	ev = (struct inotify_event *)buf;
	zdtm_check(len > 0 && ev->wd == 3 && (ev->mask & IN_MODIFY), "no IN_MODIFY on wd 3 (%zd bytes)", len);
	ev = (struct inotify_event *)(buf + sizeof(*ev) + ev->len);
	zdtm_check((char *)ev < buf + len && ev->wd == 3 && (ev->mask & IN_CLOSE_WRITE), "no IN_CLOSE_WRITE on wd 3");
	wd = inotify_add_watch(in2, work, IN_ATTRIB);
	zdtm_check(wd == 1, "a first watch in the second instance got descriptor %d", wd);
	wd = inotify_add_watch(in, work, IN_ATTRIB);
	zdtm_check(wd == 4, "a new watch got descriptor %d, expected 4", wd);
	zdtm_pass();
}
