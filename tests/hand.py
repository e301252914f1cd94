"""Reference maths in plain Python (lists of floats, or tensors converted to lists), for tests that check
the library's losses against values computed independently of it."""
import math


def _rows(x):
    return x.tolist() if hasattr(x, "tolist") else x


def softmax(row, t=1.0):
    row = _rows(row)
    m = max(row)
    e = [math.exp((v - m) / t) for v in row]
    return [x / sum(e) for x in e]


def ce(logit_rows, labels):
    """Mean cross-entropy."""
    rows, labels = _rows(logit_rows), _rows(labels)
    return sum(-math.log(softmax(r)[y]) for r, y in zip(rows, labels)) / len(rows)


def kd_probs(q_rows, student_rows, t):
    """T² · (1/B) Σ_b Σ_k q_bk (log q_bk − log σ(s_b/T)_k), with 0·log 0 = 0."""
    q_rows, student_rows = _rows(q_rows), _rows(student_rows)
    total = 0.0
    for q, s in zip(q_rows, student_rows):
        p = softmax(s, t)
        total += sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p) if qi > 0)
    return t * t * total / len(q_rows)


def kd(teacher_rows, student_rows, t):
    """T² · (1/B) Σ_b KL(σ(teacher_b/T) ‖ σ(student_b/T))."""
    return kd_probs([softmax(r, t) for r in _rows(teacher_rows)], student_rows, t)
