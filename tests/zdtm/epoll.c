/*
 * epoll: registrations, nested epoll, and events pending at checkpoint.
 *
 * State: epoll E with four registrations, each with its own data:
 *   A  pipe P read end, EPOLLIN, level-triggered, P holds a byte (ready);
 *   B  pipe Q read end, EPOLLIN|EPOLLET, Q empty;
 *   C  an eventfd holding 1, EPOLLIN|EPOLLONESHOT, already reported once
 *      (so disarmed though readable);
 *   D  pipe R write end, EPOLLOUT|EPOLLEXCLUSIVE (ready);
 * and close-on-exec epoll N watching E (EPOLLIN), which E's ready items
 * make ready.
 * Verified: the tfd/events/data of every registration in fdinfo; N reports
 * exactly E's data; E reports exactly A and D (C stays disarmed, B has
 * nothing); a byte written to Q is reported once for B (edge-triggered);
 * re-arming C reports it.
 */
#include "zdtm.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

#define DA 0xa1a1a1a1a1ULL
#define DB 0xb2ULL
#define DC 0xc3c3ULL
#define DD 0xd4000000000000d4ULL
#define DN 0xe5e5ULL

static int p[2], q[2], r[2], ev, e, n;
static char items_e[1024], items_n[1024];

/* Sorts the ';'-terminated items of s (the kernel lists them in no stable order). */
static void sort_items(char *s)
{
	char items[8][160], tmp[160];
	int n = 0;
	char *p = s, *e;

	while (n < 8 && (e = strchr(p, ';'))) {
		snprintf(items[n++], sizeof(items[0]), "%.*s", (int)(e - p), p);
		p = e + 1;
	}
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (strcmp(items[i], items[j]) > 0) {
				strcpy(tmp, items[i]);
				strcpy(items[i], items[j]);
				strcpy(items[j], tmp);
			}
	s[0] = 0;
	for (int i = 0; i < n; i++) {
		strcat(s, items[i]);
		strcat(s, ";");
	}
}

/* The "tfd: ... events: ... data: ..." part of each registration. */
static void items_of(int fd, char *out, size_t size)
{
	char path[64], text[4096];
	const char *l;
	size_t off = 0;

	out[0] = 0;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (zdtm_read_file(path, text, sizeof(text)) < 0)
		return;
	for (l = strstr(text, "tfd:"); l && off < size; l = strstr(l + 1, "\ntfd:")) {
		const char *s = l[0] == '\n' ? l + 1 : l, *end = strstr(s, " pos:");
		if (!end)
			break;
		off += snprintf(out + off, size - off, "%.*s;", (int)(end - s), s);
	}
	sort_items(out);
}

static int add(int epfd, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event x = { .events = events, .data.u64 = data };
	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &x);
}

/* Events reported now, as a sorted-by-report list of data values. */
static int collect(int epfd, uint64_t *out, int max)
{
	struct epoll_event x[8];
	int k = epoll_wait(epfd, x, 8, 0);

	for (int i = 0; i < k && i < max; i++)
		out[i] = x[i].data.u64;
	return k;
}

static int has(uint64_t *got, int k, uint64_t v)
{
	for (int i = 0; i < k; i++)
		if (got[i] == v)
			return 1;
	return 0;
}

static void sabotage(void)
{
	struct epoll_event x = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = DC };
	char c;

	switch (zdtm_sabotage) {
	case 1: /* A was removed */
		epoll_ctl(e, EPOLL_CTL_DEL, p[0], NULL);
		break;
	case 2: /* A's data changed */
		x.events = EPOLLIN;
		x.data.u64 = 1;
		epoll_ctl(e, EPOLL_CTL_MOD, p[0], &x);
		break;
	case 3: /* C was re-armed */
		epoll_ctl(e, EPOLL_CTL_MOD, ev, &x);
		break;
	case 4: /* A's byte was consumed */
		read(p[0], &c, 1);
		break;
	case 5: /* N no longer watches E */
		epoll_ctl(n, EPOLL_CTL_DEL, e, NULL);
		break;
	}
}

int main(void)
{
	struct epoll_event x = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = DC };
	uint64_t got[8], one = 1;
	char now[1024];
	int k;

	zdtm_init();
	if (pipe(p) || pipe(q) || pipe(r))
		zdtm_die("pipe: %s", strerror(errno));
	ev = eventfd(0, EFD_NONBLOCK);
	e = epoll_create1(0);
	n = epoll_create1(EPOLL_CLOEXEC);
	if (ev < 0 || e < 0 || n < 0)
		zdtm_die("eventfd/epoll_create1: %s", strerror(errno));
	if (add(e, p[0], EPOLLIN, DA) || add(e, q[0], EPOLLIN | EPOLLET, DB) || add(e, ev, EPOLLIN | EPOLLONESHOT, DC) ||
	    add(e, r[1], EPOLLOUT | EPOLLEXCLUSIVE, DD) || add(n, e, EPOLLIN, DN))
		zdtm_die("epoll_ctl: %s", strerror(errno));
	if (write(p[1], "a", 1) != 1 || write(ev, &one, 8) != 8)
		zdtm_die("write: %s", strerror(errno));
	/* Reports A, C and D; C is disarmed from now on. */
	k = collect(e, got, 8);
	if (k != 3 || !has(got, k, DC))
		zdtm_die("setup: %d events reported", k);
	items_of(e, items_e, sizeof(items_e));
	items_of(n, items_n, sizeof(items_n));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	items_of(e, now, sizeof(now));
	zdtm_check(!strcmp(now, items_e), "registrations of E: %s, were %s", now, items_e);
	items_of(n, now, sizeof(now));
	zdtm_check(!strcmp(now, items_n), "registrations of N: %s, were %s", now, items_n);
	zdtm_check(fcntl(n, F_GETFD) == FD_CLOEXEC && fcntl(e, F_GETFD) == 0, "FD_CLOEXEC changed");
	k = collect(n, got, 8);
	zdtm_check(k == 1 && got[0] == DN, "N reported %d events (first %#llx), expected E's", k, k > 0 ? (unsigned long long)got[0] : 0ULL);
	k = collect(e, got, 8);
	zdtm_check(k == 2 && has(got, k, DA) && has(got, k, DD), "E reported %d events, expected exactly A and D", k);
	zdtm_check(write(q[1], "b", 1) == 1, "write Q: %s", strerror(errno));
	k = collect(e, got, 8);
	zdtm_check(k == 3 && has(got, k, DB), "after writing Q, E reported %d events, expected A, B and D", k);
	k = collect(e, got, 8);
	zdtm_check(k == 2 && !has(got, k, DB), "B reported again (%d events), it is edge-triggered", k);
	zdtm_check(epoll_ctl(e, EPOLL_CTL_MOD, ev, &x) == 0, "re-arm C: %s", strerror(errno));
	k = collect(e, got, 8);
	zdtm_check(k == 3 && has(got, k, DC), "re-armed C not reported (%d events)", k);
	zdtm_pass();
}
