from django.urls import path

from . import views

urlpatterns = [
    path("books/", views.create_book),
    path("books/<int:pk>/provenance", views.book_provenance),
]
