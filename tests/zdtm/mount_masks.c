/*
 * mount_masks: a mount namespace of its own in which host paths are
 * hidden, as a partition's are (lpm's state, keys and sockets): an empty
 * read-only tmpfs over a directory that holds a file, and the null device
 * bound read-only over a file.
 *
 * State: unshare(CLONE_NEWNS), / made private, then
 *   mm.dir (holding mm.dir/secret): tmpfs ro,nosuid,nodev,noexec,
 *          size=4k,mode=700
 *   mm.key (holding "key"): /dev/null bound, remounted ro,nosuid,noexec
 * Verified: mm.dir is a tmpfs, read-only, empty, mode 0700, nothing can be
 * created in it (EROFS), secret is not there; mm.key is the null device
 * (1:3), reads nothing, read-only, nosuid and noexec (a device node
 * opens for writing on a read-only mount: what is written goes to the
 * null device); /proc/self/mountinfo lists the dir's mask before the
 * key's, each once.
 */
#include "zdtm.h"

#include <dirent.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>

#define TMPFS_MAGIC 0x01021994

static char dir[4096], key[4096], secret[4096];
static char info[65536];

static void put(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		zdtm_die("write %s: %s", path, strerror(errno));
	close(fd);
}

/* Where the mask over path is in mountinfo (its line's offset), or -1. */
static long line_of(const char *path)
{
	char needle[4200];
	char *hit;
	int fd = open("/proc/self/mountinfo", O_RDONLY);
	ssize_t n, got = 0;

	if (fd < 0)
		return -2;
	while ((n = read(fd, info + got, sizeof(info) - 1 - got)) > 0)
		got += n;
	close(fd);
	info[got] = 0;
	snprintf(needle, sizeof(needle), " %s ", path);
	hit = strstr(info, needle);
	if (!hit)
		return -1;
	/* Each once. */
	if (strstr(hit + 1, needle))
		return -3;
	return hit - info;
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the key's mask gone: the key reads */
		umount2(key, MNT_DETACH);
		break;
	case 2: /* the directory's mask gone: the secret is there */
		umount2(dir, MNT_DETACH);
		break;
	case 3: /* the directory's mask writable */
		mount(NULL, dir, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=700");
		break;
	}
}

int main(void)
{
	struct statfs sf;
	struct statvfs sv;
	struct stat st;
	struct dirent *de;
	char p[4200], b[16];
	DIR *d;
	int fd, entries = 0;
	long ld, lk;

	zdtm_init();
	zdtm_path(dir, sizeof(dir), "mm.dir");
	zdtm_path(key, sizeof(key), "mm.key");
	snprintf(secret, sizeof(secret), "%s/secret", dir);
	if (mkdir(dir, 0755) && errno != EEXIST)
		zdtm_die("mkdir %s: %s", dir, strerror(errno));
	put(secret, "secret");
	put(key, "key");
	if (unshare(CLONE_NEWNS))
		zdtm_die("unshare: %s", strerror(errno));
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		zdtm_die("make / private: %s", strerror(errno));
	if (mount("tmpfs", dir, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=700"))
		zdtm_die("mount tmpfs on %s: %s", dir, strerror(errno));
	if (mount("/dev/null", key, NULL, MS_BIND, NULL) ||
	    mount(NULL, key, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL))
		zdtm_die("bind /dev/null on %s: %s", key, strerror(errno));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(statfs(dir, &sf) == 0, "statfs %s: %s", dir, strerror(errno));
	zdtm_check(sf.f_type == TMPFS_MAGIC, "%s is fs %#lx, not tmpfs", dir, (unsigned long)sf.f_type);
	zdtm_check(statvfs(dir, &sv) == 0 && (sv.f_flag & ST_RDONLY), "%s is not read-only (flags %#lx)", dir, sv.f_flag);
	zdtm_check(stat(dir, &st) == 0 && st.st_mode == (S_IFDIR | 0700), "%s mode %o", dir, st.st_mode);
	d = opendir(dir);
	zdtm_check(d != NULL, "opendir %s: %s", dir, strerror(errno));
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			entries++;
	closedir(d);
	zdtm_check(entries == 0, "%s holds %d entries", dir, entries);
	zdtm_check(access(secret, F_OK) && errno == ENOENT, "%s is visible", secret);
	snprintf(p, sizeof(p), "%s/new", dir);
	fd = open(p, O_WRONLY | O_CREAT, 0600);
	zdtm_check(fd < 0 && errno == EROFS, "creating %s: fd %d errno %d", p, fd, errno);

	zdtm_check(stat(key, &st) == 0, "stat %s: %s", key, strerror(errno));
	zdtm_check(S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3), "%s is not the null device (mode %o)", key, st.st_mode);
	fd = open(key, O_RDONLY);
	zdtm_check(fd >= 0, "open %s: %s", key, strerror(errno));
	zdtm_check(read(fd, b, sizeof(b)) == 0, "%s reads something", key);
	close(fd);
	zdtm_check(statvfs(key, &sv) == 0, "statvfs %s: %s", key, strerror(errno));
	zdtm_check((sv.f_flag & (ST_RDONLY | ST_NOSUID | ST_NOEXEC)) == (ST_RDONLY | ST_NOSUID | ST_NOEXEC),
		   "%s flags %#lx", key, sv.f_flag);

	ld = line_of(dir);
	lk = line_of(key);
	zdtm_check(ld >= 0 && lk >= 0 && ld < lk, "mountinfo: the masks at %ld and %ld", ld, lk);
	zdtm_pass();
}
