import json

from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from koherent_pg.django import provenance_of

from .models import Author, Book


@csrf_exempt
def create_book(request):
    body = json.loads(request.body or "{}")
    author, _ = Author.objects.get_or_create(name=body.get("author", "anon"))
    book = Book.objects.create(title=body["title"], author=author)       # autocommit, or the request's atomic
    if body.get("atomic"):
        with transaction.atomic():
            Book.objects.filter(pk=book.pk).update(title=body["title"] + " (edited)")
            Author.objects.filter(pk=author.pk).update(name=author.name + "!")
    return JsonResponse({"book": book.pk, "author": author.pk})


def book_provenance(request, pk):
    book = Book.objects.get(pk=pk)
    return JsonResponse({"entries": [{"kind": e.kind, "task_id": e.task_id, "title": e.row_data["title"]}
                                     for e in provenance_of(book)]})
