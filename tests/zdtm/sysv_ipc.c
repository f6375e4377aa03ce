/*
 * sysv_ipc: SysV shared memory, semaphores and message queues in an ipc
 * namespace of the tree's own.
 *
 * Run as: unshare --ipc sysv_ipc (the program is the root and owns the
 * namespace). Ids are made non-trivial by creating and removing segments
 * first. State: segment A (key 0x1234, 3 pages + 100 bytes, mode 0640,
 * patterned) attached read-write in the parent and, by fork, the child;
 * segment B (IPC_PRIVATE, 2 pages, mode 0600, patterned) attached nowhere;
 * segment C (1 page) attached in both, then marked removed (IPC_RMID);
 * a semaphore set (key 0x5678, mode 0600) of 4 values 0, 1, 7, 32767; a
 * message queue (key 0x9abc, mode 0620, qbytes 8192) holding four
 * messages of types 1, 5, 2, 1 (one empty, one of 300 bytes).
 * Verified: every id, key, mode, size and attach count (IPC_STAT); the
 * contents through the parent's attachments and B's through a new one; C
 * still removed and shared with the child (ping-pong through it); semaphore
 * values; the messages in order with their types; no other object.
 */
#include "zdtm.h"

#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

#define A_SIZE (3 * 4096 + 100)
#define B_SIZE (2 * 4096)

static int ida, idb, idc, ids, idq;
static char *pa, *pc;
static char buf[8192];

struct msg {
	long mtype;
	char text[512];
};
static struct msg m;
static const long types[4] = { 1, 5, 2, 1 };
static const int lens[4] = { 5, 300, 0, 5 };

static void fill_msg(int i)
{
	m.mtype = types[i];
	for (int j = 0; j < lens[i]; j++)
		m.text[j] = (char)(i * 31 + j);
}

static int count_rows(const char *path)
{
	int n = -1;
	if (zdtm_read_file(path, buf, sizeof(buf)) < 0)
		return -1;
	for (char *p = buf; (p = strchr(p, '\n')); p++)
		n++;
	return n;
}

static void check_shm(int id, key_t key, int mode, size_t size, int nattch)
{
	struct shmid_ds ds;
	zdtm_check(shmctl(id, IPC_STAT, &ds) == 0, "shm %d: IPC_STAT: %s", id, strerror(errno));
	zdtm_check(ds.shm_perm.__key == key && (ds.shm_perm.mode & 07777) == mode && ds.shm_segsz == size &&
			   (int)ds.shm_nattch == nattch,
		   "shm %d: key %#x mode %#o size %zu nattch %d, expected %#x %#o %zu %d", id, ds.shm_perm.__key,
		   ds.shm_perm.mode, ds.shm_segsz, (int)ds.shm_nattch, key, mode, size, nattch);
}

int main(void)
{
	unsigned short vals[4] = { 0, 1, 7, 32767 }, now[4];
	struct msqid_ds qds;
	struct semid_ds sds;
	long long deadline;
	pid_t child;
	int status, dummy[3];
	char *pb;

	zdtm_init();
	for (int i = 0; i < 3; i++)
		if ((dummy[i] = shmget(IPC_PRIVATE, 4096, 0600)) < 0)
			zdtm_die("shmget: %s (run me under unshare --ipc)", strerror(errno));
	shmctl(dummy[0], IPC_RMID, NULL);
	shmctl(dummy[2], IPC_RMID, NULL);
	ida = shmget(0x1234, A_SIZE, IPC_CREAT | IPC_EXCL | 0640);
	idb = shmget(IPC_PRIVATE, B_SIZE, 0600);
	shmctl(dummy[1], IPC_RMID, NULL);
	idc = shmget(IPC_PRIVATE, 4096, 0600);
	if (ida < 0 || idb < 0 || idc < 0)
		zdtm_die("shmget: %s", strerror(errno));
	pa = shmat(ida, NULL, 0);
	pb = shmat(idb, NULL, 0);
	pc = shmat(idc, NULL, 0);
	if (pa == (void *)-1 || pb == (void *)-1 || pc == (void *)-1)
		zdtm_die("shmat: %s", strerror(errno));
	zdtm_fill(pa, A_SIZE - 100 + 96, 1);
	zdtm_fill(pb, B_SIZE, 2);
	shmdt(pb);
	ids = semget(0x5678, 4, IPC_CREAT | IPC_EXCL | 0600);
	if (ids < 0 || semctl(ids, 0, SETALL, vals))
		zdtm_die("semaphores: %s", strerror(errno));
	idq = msgget(0x9abc, IPC_CREAT | IPC_EXCL | 0620);
	if (idq < 0 || msgctl(idq, IPC_STAT, &qds))
		zdtm_die("msgget: %s", strerror(errno));
	qds.msg_qbytes = 8192;
	if (msgctl(idq, IPC_SET, &qds))
		zdtm_die("msgctl IPC_SET: %s", strerror(errno));
	for (int i = 0; i < 4; i++) {
		fill_msg(i);
		if (msgsnd(idq, &m, lens[i], IPC_NOWAIT))
			zdtm_die("msgsnd: %s", strerror(errno));
	}
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		/* Answers each odd number the parent writes at pc with the next. */
		volatile int *cell = (volatile int *)pc;
		for (;;) {
			if (*cell & 1)
				*cell = *cell + 1;
			zdtm_sleep_ms(1);
		}
	}
	zdtm_kid(child);
	if (shmctl(idc, IPC_RMID, NULL))
		zdtm_die("shmctl IPC_RMID: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();

	if (zdtm_sabotage == 1)
		pa[5000]++;
	if (zdtm_sabotage == 2)
		semctl(ids, 2, SETVAL, 8);
	if (zdtm_sabotage == 3)
		msgrcv(idq, &m, sizeof(m.text), 0, IPC_NOWAIT);
	if (zdtm_sabotage == 4)
		shmdt(pa);
	if (zdtm_sabotage == 5)
		kill(child, SIGKILL);

	check_shm(ida, 0x1234, 0640, A_SIZE, 2);
	check_shm(idb, IPC_PRIVATE, 0600, B_SIZE, 0);
	check_shm(idc, IPC_PRIVATE, 0600 | SHM_DEST, 4096, 2);
	zdtm_check(zdtm_diff(pa, A_SIZE - 100 + 96, 1) < 0, "segment A differs at word %ld", zdtm_diff(pa, A_SIZE - 4, 1));
	for (int i = A_SIZE - 4; i < 4 * 4096; i++)
		zdtm_check(pa[i] == 0, "segment A not zero at %d", i);
	zdtm_check(count_rows("/proc/sysvipc/shm") == 3, "segments: %s", buf);
	zdtm_check(count_rows("/proc/sysvipc/sem") == 1, "semaphore sets: %s", buf);
	zdtm_check(count_rows("/proc/sysvipc/msg") == 1, "message queues: %s", buf);

	zdtm_check(semctl(ids, 0, IPC_STAT, &sds) == 0 && sds.sem_perm.__key == 0x5678 &&
			   (sds.sem_perm.mode & 0777) == 0600 && sds.sem_nsems == 4,
		   "semaphore set %d: key %#x mode %#o nsems %lu", ids, sds.sem_perm.__key, sds.sem_perm.mode,
		   (unsigned long)sds.sem_nsems);
	zdtm_check(semctl(ids, 0, GETALL, now) == 0 && !memcmp(now, vals, sizeof(vals)), "semaphores %u %u %u %u",
		   now[0], now[1], now[2], now[3]);

	zdtm_check(msgctl(idq, IPC_STAT, &qds) == 0 && qds.msg_perm.__key == 0x9abc &&
			   (qds.msg_perm.mode & 0777) == 0620 && qds.msg_qbytes == 8192 && qds.msg_qnum == 4,
		   "queue %d: key %#x mode %#o qbytes %lu qnum %lu", idq, qds.msg_perm.__key, qds.msg_perm.mode,
		   (unsigned long)qds.msg_qbytes, (unsigned long)qds.msg_qnum);
	for (int i = 0; i < 4; i++) {
		struct msg want;
		ssize_t n = msgrcv(idq, &m, sizeof(m.text), 0, IPC_NOWAIT);
		want = m;
		fill_msg(i);
		zdtm_check(n == lens[i] && want.mtype == types[i] && !memcmp(want.text, m.text, lens[i]),
			   "message %d: type %ld length %zd", i, want.mtype, n);
	}

	pb = shmat(idb, NULL, SHM_RDONLY);
	zdtm_check(pb != (void *)-1, "shmat B: %s", strerror(errno));
	zdtm_check(zdtm_diff(pb, B_SIZE, 2) < 0, "segment B differs at word %ld", zdtm_diff(pb, B_SIZE, 2));
	shmdt(pb);

	*(volatile int *)pc = 41;
	deadline = zdtm_now_ms() + 10000;
	while (*(volatile int *)pc != 42) {
		zdtm_check(zdtm_now_ms() < deadline, "the child does not answer through segment C");
		zdtm_check(waitpid(child, &status, WNOHANG) == 0, "the child exited");
		zdtm_sleep_ms(2);
	}
	zdtm_pass();
}
