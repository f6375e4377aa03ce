/*
 * pty_owner: the owner, group and mode of pseudo-terminal slaves (what
 * grantpt, chown and `mesg n` set on /dev/pts/N).
 *
 * State: pty A with its slave owned by 1000:1001, mode 0600, held open;
 * pty B left as the devpts instance made it (owned by root, its group
 * and mode from the mount options), slave held open; pty C owned by
 * 1002:5, mode 0620, its slave not open (locked again).
 * Verified: through each master, the slave's (TIOCGPTPEER, O_PATH) owner,
 * group and mode; the held slaves' fstat agrees; pty C is still locked.
 * The pty numbers may differ after a restore.
 */
#include "zdtm.h"

#include <sys/ioctl.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

#define NPTY 3
static int masters[NPTY], slaves[NPTY] = { -1, -1, -1 };
static struct stat want[NPTY];

static int peer_stat(int m, struct stat *st)
{
	int fd = ioctl(m, TIOCGPTPEER, O_PATH | O_CLOEXEC);
	int r;

	if (fd < 0)
		return -1;
	r = fstat(fd, st);
	close(fd);
	return r;
}

static const char *differs(int i, char *msg, size_t size)
{
	struct stat st;

	if (peer_stat(masters[i], &st))
		return snprintf(msg, size, "pty %c: TIOCGPTPEER: %s", 'A' + i, strerror(errno)), msg;
	if (st.st_uid != want[i].st_uid || st.st_gid != want[i].st_gid || st.st_mode != want[i].st_mode)
		return snprintf(msg, size, "pty %c: slave %u:%u mode %o, expected %u:%u mode %o", 'A' + i, st.st_uid, st.st_gid,
				st.st_mode & 07777, want[i].st_uid, want[i].st_gid, want[i].st_mode & 07777),
		       msg;
	if (slaves[i] >= 0 && (fstat(slaves[i], &st) || st.st_uid != want[i].st_uid || st.st_gid != want[i].st_gid ||
			       st.st_mode != want[i].st_mode))
		return snprintf(msg, size, "pty %c: the held slave shows %u:%u mode %o", 'A' + i, st.st_uid, st.st_gid,
				st.st_mode & 07777),
		       msg;
	return NULL;
}

int main(void)
{
	char msg[300];
	const char *err;
	int lock, zero = 0;

	zdtm_init();
	for (int i = 0; i < NPTY; i++) {
		masters[i] = posix_openpt(O_RDWR | O_NOCTTY);
		if (masters[i] < 0 || unlockpt(masters[i]))
			zdtm_die("posix_openpt: %s", strerror(errno));
		if (i < 2) {
			slaves[i] = ioctl(masters[i], TIOCGPTPEER, O_RDWR | O_NOCTTY);
			if (slaves[i] < 0)
				zdtm_die("TIOCGPTPEER: %s", strerror(errno));
		}
	}
	if (fchown(slaves[0], 1000, 1001) || fchmod(slaves[0], 0600))
		zdtm_die("chown the slave: %s", strerror(errno));
	{
		int fd = ioctl(masters[2], TIOCGPTPEER, O_RDWR | O_NOCTTY);
		if (fd < 0 || fchown(fd, 1002, 5) || fchmod(fd, 0620))
			zdtm_die("chown slave C: %s", strerror(errno));
		close(fd);
		lock = 1;
		if (ioctl(masters[2], TIOCSPTLCK, &lock))
			zdtm_die("lock C: %s", strerror(errno));
	}
	for (int i = 0; i < NPTY; i++)
		if (peer_stat(masters[i], &want[i]))
			zdtm_die("stat slave %d: %s", i, strerror(errno));
	zdtm_ready();
	zdtm_wait();

	switch (zdtm_sabotage) {
	case 1: /* the owner as a restore by root would leave it */
		fchown(slaves[0], 0, 0);
		break;
	case 2: /* mesg y */
		fchmod(slaves[0], 0620);
		break;
	case 3: /* the locked pty's owner reset */
	{
		int fd;
		ioctl(masters[2], TIOCSPTLCK, &zero);
		fd = ioctl(masters[2], TIOCGPTPEER, O_RDWR | O_NOCTTY);
		fchown(fd, 0, 5);
		close(fd);
		lock = 1;
		ioctl(masters[2], TIOCSPTLCK, &lock);
		break;
	}
	}
	for (int i = 0; i < NPTY; i++)
		if ((err = differs(i, msg, sizeof(msg))))
			zdtm_fail("%s", err);
	lock = 0;
	zdtm_check(ioctl(masters[2], TIOCGPTLCK, &lock) == 0 && lock == 1, "pty C is no longer locked");
	zdtm_pass();
}
