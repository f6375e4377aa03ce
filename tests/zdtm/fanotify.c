/*
 * fanotify: a fanotify group and its marks.
 *
 * State: a group (FAN_CLASS_NOTIF, non-blocking, unlimited queue, event
 * descriptors O_RDONLY|O_LARGEFILE) with marks on the file "watched/f"
 * (FAN_MODIFY|FAN_CLOSE_WRITE), on the directory "watched" (FAN_OPEN of
 * its children), an ignored mask (FAN_OPEN, surviving modification) on
 * "watched/quiet", and FAN_OPEN_EXEC on the mount and on the filesystem
 * of /dev. Nothing queued.
 * Verified: every "fanotify" line of fdinfo as before (flags, event
 * flags, each mark in order with its flags and masks; the mount mark on
 * the mount at /dev of this process's own mount namespace); O_NONBLOCK;
 * nothing queued; opening, writing and closing "watched/f" reports
 * FAN_OPEN, FAN_MODIFY and FAN_CLOSE_WRITE, opening "watched/other"
 * FAN_OPEN, opening "watched/quiet" nothing.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>

static int fan;
static char lines[4096], dir[4096];

/*
 * The mount point of mount `id` in this process's mount namespace, or
 * "?" for a mount it does not have (a mark on another namespace's mount).
 */
static const char *mount_point(unsigned id, char *out, size_t size)
{
	static char info[65536];
	const char *l;

	snprintf(out, size, "?");
	if (zdtm_read_file("/proc/self/mountinfo", info, sizeof(info)) < 0)
		return out;
	for (l = info; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		unsigned mid;
		char point[4096];

		if (sscanf(l, "%u %*u %*s %*s %4095s", &mid, point) == 2 && mid == id) {
			snprintf(out, size, "%s", point);
			break;
		}
	}
	return out;
}

/*
 * Every "fanotify" line of fdinfo; a mount mark names its mount by its
 * mount point here (mount ids are the kernel's to give: a partition
 * moved to another host has its mounts made anew).
 */
static void fan_lines(char *out, size_t size)
{
	char path[64], text[8192], point[4096];
	const char *l, *end;
	size_t off = 0;
	unsigned id;
	int rest;

	out[0] = 0;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fan);
	if (zdtm_read_file(path, text, sizeof(text)) < 0)
		return;
	for (l = strstr(text, "fanotify "); l; l = strstr(end, "fanotify ")) {
		end = strchr(l, '\n');
		if (!end)
			end = l + strlen(l);
		if (sscanf(l, "fanotify mnt_id:%x %n", &id, &rest) == 1 && l + rest <= end)
			off += snprintf(out + off, size - off, "fanotify mount:%s %.*s\n", mount_point(id, point, sizeof(point)),
					(int)(end - l - rest), l + rest);
		else
			off += snprintf(out + off, size - off, "%.*s\n", (int)(end - l), l);
	}
}

static int queued(void)
{
	int n = -1;

	ioctl(fan, FIONREAD, &n);
	return n;
}

/* The mask of the next event (waiting up to 10 s), or 0. */
static unsigned long long next_event(int wait_ms)
{
	static char buf[4096] __attribute__((aligned(8)));
	static ssize_t len, off;
	struct fanotify_event_metadata *e;

	if (off >= len) {
		struct pollfd p = { .fd = fan, .events = POLLIN };

		off = len = 0;
		if (poll(&p, 1, wait_ms) != 1)
			return 0;
		len = read(fan, buf, sizeof(buf));
		if (len <= 0) {
			len = 0;
			return 0;
		}
	}
	e = (struct fanotify_event_metadata *)(buf + off);
	off += e->event_len;
	if (e->fd >= 0)
		close(e->fd);
	return e->mask;
}

static int touch(const char *name, int flags)
{
	char path[4200];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, flags | O_CREAT, 0600);
	if (fd < 0)
		return -1;
	if ((flags & O_ACCMODE) != O_RDONLY && write(fd, "x", 1) != 1)
		return -1;
	return close(fd);
}

static void sabotage(void)
{
	char path[4200];

	switch (zdtm_sabotage) {
	case 1: /* the mark on f is gone */
		snprintf(path, sizeof(path), "%s/f", dir);
		fanotify_mark(fan, FAN_MARK_REMOVE, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, path);
		break;
	case 2: /* flags lost */
		fcntl(fan, F_SETFL, 0);
		break;
	}
}

int main(void)
{
	char path[4200], now[4096];
	unsigned long long m1, m2;

	zdtm_init();
	if (!getcwd(dir, sizeof(dir) - 16))
		zdtm_die("getcwd: %s", strerror(errno));
	strcat(dir, "/watched");
	if (mkdir(dir, 0700) && errno != EEXIST)
		zdtm_die("mkdir: %s", strerror(errno));
	if (touch("f", O_WRONLY) || touch("quiet", O_WRONLY) || touch("other", O_WRONLY))
		zdtm_die("create files: %s", strerror(errno));
	fan = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE, O_RDONLY | O_LARGEFILE);
	if (fan < 0)
		zdtm_die("fanotify_init: %s", strerror(errno));
	snprintf(path, sizeof(path), "%s/f", dir);
	if (fanotify_mark(fan, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, path))
		zdtm_die("mark f: %s", strerror(errno));
	if (fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN | FAN_EVENT_ON_CHILD, AT_FDCWD, dir))
		zdtm_die("mark dir: %s", strerror(errno));
	snprintf(path, sizeof(path), "%s/quiet", dir);
	if (fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, AT_FDCWD, path))
		zdtm_die("mark quiet: %s", strerror(errno));
	if (fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN_EXEC, AT_FDCWD, "/dev"))
		zdtm_die("mark mount /dev: %s", strerror(errno));
	if (fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC, AT_FDCWD, "/dev"))
		zdtm_die("mark filesystem /dev: %s", strerror(errno));
	fan_lines(lines, sizeof(lines));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	fan_lines(now, sizeof(now));
	zdtm_check(!strcmp(now, lines), "fdinfo:\n%s\nwas:\n%s", now, lines);
	zdtm_check(fcntl(fan, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	zdtm_check(queued() == 0, "%d bytes queued", queued());
	snprintf(path, sizeof(path), "%s/f", dir);
	{
		int fd = open(path, O_WRONLY);

		zdtm_check(fd >= 0 && write(fd, "y", 1) == 1, "write f: %s", strerror(errno));
		close(fd);
		/* Events of one file may come merged into one: their masks, up to the close. */
		m1 = 0;
		while (!(m1 & FAN_CLOSE_WRITE) && (m2 = next_event(10000)))
			m1 |= m2;
		m2 = next_event(0);
	}
	zdtm_check(m1 == (FAN_OPEN | FAN_MODIFY | FAN_CLOSE_WRITE) && m2 == 0, "opening and writing f reported %#llx, then %#llx", m1, m2);
	zdtm_check(touch("quiet", O_RDONLY) == 0 && touch("other", O_RDONLY) == 0, "open: %s", strerror(errno));
	m1 = next_event(10000);
	m2 = next_event(0);
	zdtm_check(m1 == FAN_OPEN && m2 == 0, "opening quiet and other reported %#llx, %#llx", m1, m2);
	zdtm_pass();
}
