#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#define N 64
static long count[N], total;
static double acc[N];
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static void *work(void *a) {
    long i = (long)a;
    double x = i + 0.5;
    for (;;) {
        pthread_mutex_lock(&m); total++; pthread_mutex_unlock(&m);
        count[i]++;
        x = x * 1.000001 + 0.25; if (x > 1e6) x = i + 0.5;
        acc[i] = x;
        usleep(2000);
    }
}
int main(int argc, char **argv) {
    pthread_t t;
    for (long i = 0; i < N; i++) pthread_create(&t, 0, work, (void *)i);
    for (long n = 1;; n++) {
        usleep(100000);
        long sum = 0; int bad = 0;
        pthread_mutex_lock(&m);
        for (int i = 0; i < N; i++) { sum += count[i]; if (acc[i] < i) bad = 1; }
        FILE *f = fopen(argv[1], "a");
        fprintf(f, "%ld %ld %ld %s\n", n, total, sum, bad ? "BAD" : "ok");
        fclose(f);
        pthread_mutex_unlock(&m);
    }
}
