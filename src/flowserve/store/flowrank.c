/* flowrank: BM25 as FTS5's bm25() computes it, for a top-k query, made cheaper in two ways
 * (see flowserve/knowledge/fts5.py for why each matters):
 *
 *  - the document frequencies come as arguments (flowserve keeps them counted per version
 *    of the index) instead of being recounted with a scan of every phrase's whole doclist
 *    in every statement;
 *  - a row whose score provably cannot reach the statement's top_k is not scored. Once
 *    top_k rows are scored, a row is first bounded phrase by phrase, rarest first (the order
 *    flowserve writes them in), each phrase adding at most idf * (k1 + 1) whatever its
 *    frequency: most rows drop out after a look at the rare phrases alone. A row that
 *    passes is bounded again with its frequencies and the least length it can have (its
 *    most frequent phrase's hits). Only then is its length read: one lookup in FTS5's
 *    docsize table per row, most of bm25()'s time. A row that drops out gets -1, below every
 *    real score (>= 0), and so never reaches the statement's top_k.
 *
 * SQL: flowrank(<fts table>, top_k, <weight per column>..., <document count per phrase>...)
 * returns the score (bm25() negated: higher is better) or -1. A negative count leaves the
 * phrase out of the score (flowserve's KB tokens, which weigh nothing in bm25() either).
 * Scores are bm25()'s to the last bit: the same expression in the same order, with the
 * same counts. (Why by hand: no library ranks FTS5 rows with counts it is given.)
 */
#include <math.h>

#include "sqlite3ext.h"
SQLITE_EXTENSION_INIT1

#define K1 1.2
#define B 0.75
#define SLACK (1.0 + 1e-9) /* the phrase bound is summed in another order than the score */

typedef struct Rank {
  int nPhrase, nCol, topK, nBest;
  double avgdl;
  double *idf;    /* nPhrase */
  double *tail;   /* nPhrase + 1: the most phrases i.. can add, idf * (k1 + 1) each */
  double *weight; /* nCol */
  double *freq;   /* nPhrase, per row */
  double *best;   /* topK: a min-heap of the best scores so far */
} Rank;

static void heapPush(Rank *r, double score) {
  double *h = r->best;
  int i;
  if (r->nBest < r->topK) {
    i = r->nBest++;
    while (i > 0 && h[(i - 1) / 2] > score) {
      h[i] = h[(i - 1) / 2];
      i = (i - 1) / 2;
    }
    h[i] = score;
    return;
  }
  if (score <= h[0]) return;
  i = 0; /* replace the least, sift it down */
  for (;;) {
    int c = 2 * i + 1;
    if (c >= r->nBest) break;
    if (c + 1 < r->nBest && h[c + 1] < h[c]) c++;
    if (h[c] >= score) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = score;
}

static int rankSetup(const Fts5ExtensionApi *api, Fts5Context *fts, int nVal,
                     sqlite3_value **apVal, Rank **out, const char **err) {
  int nPhrase = api->xPhraseCount(fts), nCol = api->xColumnCount(fts), i, rc;
  sqlite3_int64 nRow = 0, nToken = 0;
  Rank *r;
  if (nVal != 1 + nCol + nPhrase) {
    *err = "flowrank: wants top_k, a weight per column and a document count per phrase";
    return SQLITE_ERROR;
  }
  if (sqlite3_value_int(apVal[0]) < 1 || sqlite3_value_int(apVal[0]) > 10000) {
    *err = "flowrank: top_k out of range";
    return SQLITE_ERROR;
  }
  r = sqlite3_malloc64(sizeof(Rank) + sizeof(double) * (3 * (sqlite3_uint64)nPhrase + 1 + nCol +
                                                        sqlite3_value_int(apVal[0])));
  if (r == 0) return SQLITE_NOMEM;
  r->nPhrase = nPhrase;
  r->nCol = nCol;
  r->topK = sqlite3_value_int(apVal[0]);
  r->nBest = 0;
  r->idf = (double *)&r[1];
  r->freq = r->idf + nPhrase;
  r->tail = r->freq + nPhrase;
  r->weight = r->tail + nPhrase + 1;
  r->best = r->weight + nCol;
  rc = api->xRowCount(fts, &nRow);
  if (rc == SQLITE_OK) rc = api->xColumnTotalSize(fts, -1, &nToken);
  if (rc != SQLITE_OK || nRow <= 0) {
    sqlite3_free(r);
    return rc == SQLITE_OK ? SQLITE_ERROR : rc;
  }
  r->avgdl = (double)nToken / (double)nRow;
  for (i = 0; i < nCol; i++) r->weight[i] = sqlite3_value_double(apVal[1 + i]);
  for (i = 0; i < nPhrase; i++) {
    sqlite3_int64 nHit = sqlite3_value_int64(apVal[1 + nCol + i]);
    double idf = log((nRow - nHit + 0.5) / (nHit + 0.5)); /* as bm25() */
    if (idf <= 0.0) idf = 1e-6;
    r->idf[i] = nHit < 0 ? 0.0 : idf;
  }
  r->tail[nPhrase] = 0.0;
  for (i = nPhrase - 1; i >= 0; i--) r->tail[i] = r->tail[i + 1] + r->idf[i] * (K1 + 1.0);
  rc = api->xSetAuxdata(fts, r, sqlite3_free);
  if (rc != SQLITE_OK) return rc; /* xSetAuxdata freed it */
  *out = r;
  return SQLITE_OK;
}

static double score(const Rank *r, double D) {
  double s = 0.0;
  int i;
  for (i = 0; i < r->nPhrase; i++) {
    s += r->idf[i] * ((r->freq[i] * (K1 + 1.0)) / (r->freq[i] + K1 * (1 - B + B * D / r->avgdl)));
  }
  return s;
}

static void flowrank(const Fts5ExtensionApi *api, Fts5Context *fts, sqlite3_context *ctx,
                     int nVal, sqlite3_value **apVal) {
  Rank *r = api->xGetAuxdata(fts, 0);
  const char *err = 0;
  int rc = SQLITE_OK, i, longest = 0, nTok = 0, full;
  double most = 0.0; /* the most the phrases so far can add */
  if (r == 0) {
    rc = rankSetup(api, fts, nVal, apVal, &r, &err);
    if (rc != SQLITE_OK) {
      if (err) sqlite3_result_error(ctx, err, -1);
      else sqlite3_result_error_code(ctx, rc);
      return;
    }
  }
  full = r->nBest == r->topK;
  for (i = 0; i < r->nPhrase; i++) {
    Fts5PhraseIter it;
    int col, off, hits = 0;
    double f = 0.0;
    if (full && (most + r->tail[i]) * SLACK < r->best[0]) {
      sqlite3_result_double(ctx, -1.0); /* even with all the phrases left at their most */
      return;
    }
    rc = api->xPhraseFirst(fts, i, &it, &col, &off);
    if (rc != SQLITE_OK) break;
    for (; col >= 0; api->xPhraseNext(fts, &it, &col, &off)) {
      f += r->weight[col];
      hits++;
    }
    r->freq[i] = f;
    if (f > 0.0) most += r->idf[i] * (K1 + 1.0);
    if (hits > longest) longest = hits;
  }
  if (rc == SQLITE_OK && full && score(r, (double)longest) < r->best[0]) {
    /* a row holds at least its most frequent phrase's hits: with that length it would
     * score the most it can, and that is below the top_k-th */
    sqlite3_result_double(ctx, -1.0);
    return;
  }
  if (rc == SQLITE_OK) rc = api->xColumnSize(fts, -1, &nTok);
  if (rc != SQLITE_OK) {
    sqlite3_result_error_code(ctx, rc);
    return;
  }
  {
    double s = score(r, (double)nTok);
    heapPush(r, s);
    sqlite3_result_double(ctx, s);
  }
}

#ifdef _WIN32
__declspec(dllexport)
#endif
int sqlite3_flowrank_init(sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi) {
  fts5_api *fts = 0;
  sqlite3_stmt *stmt = 0;
  int rc;
  SQLITE_EXTENSION_INIT2(pApi);
  rc = sqlite3_prepare_v2(db, "SELECT fts5(?1)", -1, &stmt, 0);
  if (rc == SQLITE_OK) {
    sqlite3_bind_pointer(stmt, 1, (void *)&fts, "fts5_api_ptr", 0);
    sqlite3_step(stmt);
    rc = sqlite3_finalize(stmt);
  }
  if (rc == SQLITE_OK && (fts == 0 || fts->iVersion < 2)) rc = SQLITE_ERROR;
  if (rc == SQLITE_OK) rc = fts->xCreateFunction(fts, "flowrank", 0, flowrank, 0);
  if (rc != SQLITE_OK && pzErrMsg) *pzErrMsg = sqlite3_mprintf("flowrank: no FTS5 here");
  return rc;
}
